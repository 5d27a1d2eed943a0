"""OFA's ImageNet training augmentation (data/augment.py) against the definition of its policy."""
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ofa_el.data import augment
from ofa_el.data.augment import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, RAND_AUGMENT_OPS, AugmentOp,
                                 OFARandomAugment, RandAugment, RandAugmentConfig, RandomErasing, RandomResizedCrop,
                                 build_train_transform, eval_transform, normalized_tensor)

OFA_CONFIG = RandAugmentConfig.parse("rand-m9-mstd0.5-inc1")
FILL = (124, 116, 104)  # the ImageNet mean as 0-255 colours, timm's fill


def seed(value: int = 0) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def noise_image(width=24, height=16, value_seed=3) -> Image.Image:
    return Image.fromarray(np.random.RandomState(value_seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def level_args(name: str, magnitude: float, sign_draw: float):
    """An op's arguments at ``magnitude`` with the sign coin forced to ``sign_draw``."""
    original = random.random
    random.random = lambda: sign_draw
    try:
        return RAND_AUGMENT_OPS[name][1](magnitude)
    finally:
        random.random = original


def test_ofa_config_string_parses_to_the_policy():
    assert OFA_CONFIG == RandAugmentConfig(magnitude=9, num_layers=2, prob=0.5, magnitude_std=0.5,
                                           magnitude_max=10, increasing=True)
    assert RandAugmentConfig.parse("rand-m5-n3-p0.2-mstd101-inc1") == RandAugmentConfig(
        magnitude=5, num_layers=3, prob=0.2, magnitude_std=math.inf, increasing=True)
    for bad in ("rand-m9-x3-inc1", "original-mstd0.5", "rand-m9-mstd0.5"):
        with pytest.raises(ValueError, match="auto-augment"):
            RandAugmentConfig.parse(bad)


def test_increasing_op_set_is_timms():
    assert augment.INCREASING_OPS == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel")


@pytest.mark.parametrize("name, positive, negative", [
    ("Rotate", (27.0,), (-27.0,)),
    ("ShearX", (0.27,), (-0.27,)),
    ("ShearY", (0.27,), (-0.27,)),
    ("TranslateXRel", (0.405,), (-0.405,)),
    ("TranslateYRel", (0.405,), (-0.405,)),
    ("ColorIncreasing", (1.81,), (0.19,)),
    ("ContrastIncreasing", (1.81,), (0.19,)),
    ("BrightnessIncreasing", (1.81,), (0.19,)),
    ("SharpnessIncreasing", (1.81,), (0.19,)),
    ("PosterizeIncreasing", (1,), (1,)),  # 4 - int(9 / 10 * 4) bits kept
    ("SolarizeIncreasing", (26,), (26,)),  # 256 - int(9 / 10 * 256)
    ("SolarizeAdd", (99,), (99,)),  # int(9 / 10 * 110)
    ("AutoContrast", (), ()),
])
def test_level_to_argument_at_magnitude_9(name, positive, negative):
    """The sign coin keeps the value at or below 0.5 and negates above it (timm's _randomly_negate)."""
    assert level_args(name, 9.0, 0.25) == pytest.approx(positive)
    assert level_args(name, 9.0, 0.75) == pytest.approx(negative)


def test_increasing_ops_grow_with_magnitude():
    assert level_args("PosterizeIncreasing", 0.0, 0.2) == (4,) and level_args("PosterizeIncreasing", 10.0, 0.2) == (0,)
    assert level_args("SolarizeIncreasing", 0.0, 0.2) == (256,) and level_args("SolarizeIncreasing", 10.0, 0.2) == (0,)
    assert level_args("ContrastIncreasing", 0.0, 0.2) == (1.0,)
    assert level_args("ContrastIncreasing", 10.0, 0.7) == pytest.approx((0.1,))  # 1 - 0.9, floored at 0.1


def apply(name, image, *args):
    return RAND_AUGMENT_OPS[name][0](image, FILL, Image.BICUBIC, *args)


def test_pixel_ops_follow_their_definition():
    pixels = np.array([[[10, 100, 200], [130, 127, 255]]], dtype=np.uint8)
    image = Image.fromarray(pixels)
    np.testing.assert_array_equal(np.array(apply("Invert", image)), 255 - pixels)
    # solarize: values at or above the threshold are inverted
    np.testing.assert_array_equal(np.array(apply("SolarizeIncreasing", image, 128)),
                                  np.where(pixels >= 128, 255 - pixels, pixels))
    # solarize-add: values below 128 get the addition, capped at 255
    np.testing.assert_array_equal(np.array(apply("SolarizeAdd", image, 99)),
                                  np.where(pixels < 128, np.minimum(255, pixels.astype(int) + 99), pixels))
    np.testing.assert_array_equal(np.array(apply("PosterizeIncreasing", image, 1)), pixels & 0b10000000)
    np.testing.assert_array_equal(np.array(apply("PosterizeIncreasing", image, 0)), np.zeros_like(pixels))
    # brightness blends with black: factor 0.5 halves every value
    np.testing.assert_array_equal(np.array(apply("BrightnessIncreasing", image, 0.5)), pixels // 2)
    stretched = Image.fromarray(np.array([[[50, 50, 50], [100, 100, 100]]], dtype=np.uint8))
    contrasted = np.array(apply("AutoContrast", stretched)).astype(int)  # [50, 100] stretched to [0, 255]
    assert contrasted[0, 0].max() == 0 and contrasted[0, 1].min() >= 254  # (PIL's lookup table rounds)
    np.testing.assert_array_equal(np.array(apply("Equalize", image)), np.array(ImageOps.equalize(image)))


def test_geometric_ops_move_content_and_fill_with_the_mean_colour():
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.putpixel((10, 5), (255, 255, 255))
    moved = np.array(apply("TranslateXRel", image, 0.2))  # output x samples input x + 4
    assert tuple(moved[5, 6]) == (255, 255, 255) and moved[5, 10].max() == 0
    assert tuple(moved[5, 19]) == FILL  # uncovered columns take the fill
    moved_y = np.array(apply("TranslateYRel", image, -0.2))  # output y samples input y - 2
    assert tuple(moved_y[7, 10]) == (255, 255, 255)
    square = Image.new("RGB", (11, 11), (0, 0, 0))
    square.putpixel((10, 5), (255, 255, 255))
    rotated = np.array(apply("Rotate", square, 90.0))  # counter-clockwise about the centre
    assert rotated[0, 5].min() > 200
    sheared = np.array(apply("ShearX", square, 0.4))  # output (x, y) samples input (x + 0.4 y, y)
    assert tuple(sheared[5, 8]) == (255, 255, 255) and tuple(sheared[10, 10]) == FILL


def test_magnitude_noise_is_normal_around_9_clipped_to_0_10():
    seed(1)
    op = AugmentOp("Rotate", OFA_CONFIG, FILL, Image.BICUBIC)
    draws = np.array([op.sample_magnitude() for _ in range(20000)])
    assert draws.min() >= 0 and draws.max() <= 10
    assert abs(draws.mean() - 8.996) < 0.01  # E[min(N(9, 0.5), 10)] = 9 - 0.0042
    assert abs(draws.std() - 0.49) < 0.01
    assert abs((draws == 10).mean() - 0.0228) < 0.004  # P(N(9, 0.5) > 10)
    fixed = AugmentOp("Rotate", RandAugmentConfig(magnitude=9, increasing=True), FILL, Image.BICUBIC)
    assert {fixed.sample_magnitude() for _ in range(10)} == {9.0}


def test_each_op_applies_with_probability_half_and_two_are_chosen():
    seed(2)
    op = AugmentOp("Invert", OFA_CONFIG, FILL, Image.BICUBIC)
    image = noise_image()
    applied = np.mean([op(image) is not image for _ in range(4000)])
    assert abs(applied - 0.5) < 0.03
    chosen = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __call__(self, im):
            chosen.append(self.name)
            return im

    policy = RandAugment(OFA_CONFIG, FILL)
    policy.ops = [Recorder(single.name) for single in policy.ops]
    for _ in range(3000):
        policy(image)
    assert len(chosen) == 6000  # two ops per image
    counts = np.array([chosen.count(name) for name in augment.INCREASING_OPS])
    assert counts.min() > 6000 / 15 * 0.75 and counts.max() < 6000 / 15 * 1.25  # uniform, with replacement


def test_ofa_random_augment_levels():
    stage = OFARandomAugment()
    np.random.seed(0)
    image = noise_image()
    brighter = np.array(stage.apply("Brightness", image)).astype(float)  # factor 0.7 * 1.8 + 0.1 = 1.36
    assert np.abs(brighter - np.minimum(255, np.array(image) * 1.36)).max() <= 1
    dot = Image.new("RGB", (20, 10), (0, 0, 0))
    dot.putpixel((10, 5), (255, 255, 255))
    np.random.seed(0)  # first draw 0.549 > 0.5: negative offset, output x samples input x - 7
    shifted = np.array(stage.apply("TranslateX", dot))
    assert tuple(shifted[5, 17]) == (255, 255, 255) and tuple(shifted[5, 0]) == (128, 128, 128)
    with pytest.raises(ValueError, match="unknown ops"):
        OFARandomAugment(ops=["Solarise"])


def test_random_resized_crop_box_follows_scale_and_ratio():
    seed(3)
    crop = RandomResizedCrop(32)
    areas, ratios = [], []
    for _ in range(3000):
        top, left, h, w = crop.crop_box(200, 100)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 200
        areas.append(h * w / 20000)
        ratios.append(w / h)
    assert min(areas) >= 0.07 and max(areas) <= 1.0
    assert np.percentile(ratios, 1) > 0.7 and np.percentile(ratios, 99) < 1.4
    assert crop(noise_image(200, 100)).size == (32, 32)
    # a very wide image falls back to the centre crop of the widest allowed ratio when no try fits
    crop_tiny = RandomResizedCrop(8, scale=(1.0, 1.0))
    assert crop_tiny.crop_box(400, 10) == (0, (400 - 13) // 2, 10, 13)


def test_random_erasing_probability_and_fill():
    seed(4)
    eraser = RandomErasing(0.25, mode="pixel")
    erased = 0
    for _ in range(4000):
        pixels = torch.full((3, 32, 32), 7.0)
        eraser(pixels)
        erased += bool((pixels != 7.0).any())
    assert abs(erased / 4000 - 0.25) < 0.02  # 3 standard deviations: 0.021
    seed(5)
    pixels = torch.full((3, 64, 64), 7.0)
    while not (pixels != 7.0).any():
        eraser(pixels)
    noise = pixels[pixels != 7.0]
    assert abs(noise.mean()) < 0.2 and abs(noise.std() - 1) < 0.2  # per-pixel standard normal
    fraction = noise.numel() / pixels.numel()
    assert 0.02 * 0.9 <= fraction <= 1 / 3 * 1.1
    const = torch.full((3, 16, 16), 7.0)
    seed(6)
    erase_const = RandomErasing(1.0, mode="const")
    erase_const(const)
    assert set(const.unique().tolist()) == {0.0, 7.0}
    with pytest.raises(ValueError, match="random erasing mode"):
        RandomErasing(mode="noise")


def test_train_pipeline_and_backend_name():
    seed(7)
    transform = build_train_transform(48, backend="pil")
    assert transform.backend.startswith("ofa_el PIL")
    out = transform(noise_image(80, 60))
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    seed(7)
    again = build_train_transform(48, backend="pil")(noise_image(80, 60))
    assert torch.equal(out, again)  # seeded: reproducible
    with pytest.raises(ValueError, match="--augmentation-backend"):
        build_train_transform(48, backend="torchvision")
    if augment.timm_unavailable_reason() is not None:
        with pytest.raises(ValueError, match="timm does not import"):
            build_train_transform(48, backend="timm")
        assert build_train_transform(48).backend.startswith("ofa_el PIL")


def test_eval_transform_resizes_only():
    image = noise_image(30, 20)
    expected = normalized_tensor(image.resize((16, 16), Image.BICUBIC), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert torch.equal(eval_transform(image, 16), expected)
    white = normalized_tensor(Image.new("RGB", (2, 2), (255, 255, 255)), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert white[:, 0, 0].tolist() == pytest.approx([(1 - m) / s for m, s in zip(IMAGENET_DEFAULT_MEAN,
                                                                               IMAGENET_DEFAULT_STD)])
