"""OFA's training augmentation for image classification, with timm where it imports and on PIL otherwise.

OFA's image_classify trains on ``timm.data.create_transform(is_training=True,
auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25, re_mode='pixel', re_count=1,
mean/std=ImageNet)`` with its own ``RandomAugment(2, 7)`` stage inserted after timm's RandAugment:

    RandomResizedCrop(P, scale (0.08, 1), ratio (3/4, 4/3), bicubic) -> horizontal flip p 0.5
    -> RandAugment (2 ops with replacement, each p 0.5, magnitude ~ N(9, 0.5) clipped to [0, 10],
       the increasing-severity op set) -> OFA RandomAugment (2 ops, each p 0.5, level 7 of 10)
    -> to tensor -> normalise -> RandomErasing (p 0.25, one box, per-pixel normal noise)

timm needs torchvision, which does not import beside every torch build (the CPU lock's torch 2.13 with
torchvision 0.28 fails on its compiled ops). :func:`build_train_transform` then uses the implementation
below, which follows timm's definitions op by op and draws its random numbers from the same generators
in the same order (python ``random``, numpy for the op choice, torch for the flip and the noise), so a
seeded run makes the same choices as timm. OFA's own stage works on numpy with OpenCV; here it runs
on PIL (the same affine maps, fill and enhancement factors; OpenCV's bilinear warp and PIL's differ
by rounding). :attr:`TrainTransform.backend` says which one runs; the task logs it.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from ..errors import OptionError

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
#: OFA's RandAugment configuration string for ImageNet (timm's syntax).
OFA_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
#: OFA's random-erasing probability for ImageNet.
OFA_ERASE_PROB = 0.25
#: timm's magnitude scale: magnitude 10 is an op's full strength.
LEVEL_DENOM = 10.0

# -- timm's RandAugment ops (timm/data/auto_augment.py) -----------------------------------------------------


def _negate_half_the_time(value: float) -> float:
    return -value if random.random() > 0.5 else value


def _rotate_args(magnitude: float) -> Tuple[float, ...]:
    return (_negate_half_the_time(magnitude / LEVEL_DENOM * 30.0),)


def _increasing_enhance_args(magnitude: float) -> Tuple[float, ...]:
    # 1.0 leaves the image unchanged; the factor moves away from it (towards 0.1 or 1.9) as magnitude grows
    return (max(0.1, 1.0 + _negate_half_the_time(magnitude / LEVEL_DENOM * 0.9)),)


def _shear_args(magnitude: float) -> Tuple[float, ...]:
    return (_negate_half_the_time(magnitude / LEVEL_DENOM * 0.3),)


def _translate_rel_args(magnitude: float) -> Tuple[float, ...]:
    return (_negate_half_the_time(magnitude / LEVEL_DENOM * 0.45),)


def _posterize_increasing_args(magnitude: float) -> Tuple[float, ...]:
    return (4 - int(magnitude / LEVEL_DENOM * 4),)  # bits kept: 4 at magnitude 0 down to 0 at 10


def _solarize_increasing_args(magnitude: float) -> Tuple[float, ...]:
    return (256 - min(256, int(magnitude / LEVEL_DENOM * 256)),)  # threshold: 256 (no change) down to 0


def _solarize_add_args(magnitude: float) -> Tuple[float, ...]:
    return (min(128, int(magnitude / LEVEL_DENOM * 110)),)


def _no_args(magnitude: float) -> Tuple[float, ...]:
    return ()


def _affine(image: Image.Image, matrix: Tuple[float, ...], fill: Tuple[int, ...], resample: int) -> Image.Image:
    """PIL's inverse affine map: output pixel (x, y) samples the input at (a x + b y + c, d x + e y + f)."""
    return image.transform(image.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(image: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    table = [min(255, value + add) if value < threshold else value for value in range(256)]
    return image.point(table * len(image.getbands()))


def _posterize(image: Image.Image, bits: int) -> Image.Image:
    """Keep the ``bits`` most significant bits; 0 bits is a black image (what PIL before 10 made of it;
    newer PIL rejects 0, which timm passes at magnitude 10)."""
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return image if bits >= 8 else ImageOps.posterize(image, bits)


#: An op: ``(image, fill, resample, *args) -> image``.
Op = Callable[..., Image.Image]

RAND_AUGMENT_OPS: Dict[str, Tuple[Op, Callable[[float], Tuple[float, ...]]]] = {
    "AutoContrast": (lambda im, fill, rs: ImageOps.autocontrast(im), _no_args),
    "Equalize": (lambda im, fill, rs: ImageOps.equalize(im), _no_args),
    "Invert": (lambda im, fill, rs: ImageOps.invert(im), _no_args),
    "Rotate": (lambda im, fill, rs, deg: im.rotate(deg, resample=rs, fillcolor=fill), _rotate_args),
    "PosterizeIncreasing": (lambda im, fill, rs, bits: _posterize(im, bits), _posterize_increasing_args),
    "SolarizeIncreasing": (lambda im, fill, rs, thresh: ImageOps.solarize(im, thresh), _solarize_increasing_args),
    "SolarizeAdd": (lambda im, fill, rs, add: _solarize_add(im, add), _solarize_add_args),
    "ColorIncreasing": (lambda im, fill, rs, f: ImageEnhance.Color(im).enhance(f), _increasing_enhance_args),
    "ContrastIncreasing": (lambda im, fill, rs, f: ImageEnhance.Contrast(im).enhance(f), _increasing_enhance_args),
    "BrightnessIncreasing": (lambda im, fill, rs, f: ImageEnhance.Brightness(im).enhance(f),
                             _increasing_enhance_args),
    "SharpnessIncreasing": (lambda im, fill, rs, f: ImageEnhance.Sharpness(im).enhance(f),
                            _increasing_enhance_args),
    "ShearX": (lambda im, fill, rs, s: _affine(im, (1, s, 0, 0, 1, 0), fill, rs), _shear_args),
    "ShearY": (lambda im, fill, rs, s: _affine(im, (1, 0, 0, s, 1, 0), fill, rs), _shear_args),
    "TranslateXRel": (lambda im, fill, rs, pct: _affine(im, (1, 0, pct * im.size[0], 0, 1, 0), fill, rs),
                      _translate_rel_args),
    "TranslateYRel": (lambda im, fill, rs, pct: _affine(im, (1, 0, 0, 0, 1, pct * im.size[1]), fill, rs),
                      _translate_rel_args),
}
#: timm's ``inc1`` op set (``_RAND_INCREASING_TRANSFORMS``), in timm's order (the op choice indexes it).
INCREASING_OPS = tuple(RAND_AUGMENT_OPS)


@dataclass(frozen=True)
class RandAugmentConfig:
    """A timm RandAugment string (``rand-m9-mstd0.5-inc1``) parsed: the parts OFA's string uses, and timm's
    other numeric sections (``n`` layers, ``p`` op probability, ``mmax`` magnitude bound)."""

    magnitude: float = LEVEL_DENOM
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False

    @classmethod
    def parse(cls, config: str) -> "RandAugmentConfig":
        sections = config.split("-")
        if sections[0] != "rand":
            raise ValueError(f"auto-augment {config!r}: only RandAugment strings ('rand-...') are supported")
        values: Dict[str, object] = {}
        for section in sections[1:]:
            match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d+)?)", section)
            if match is None:
                raise ValueError(f"auto-augment {config!r}: unknown section {section!r} (known: m, n, p, mstd, "
                                 "mmax, inc followed by a number)")
            key, number = match.group(1), float(match.group(2))
            if key == "mstd":
                values["magnitude_std"] = math.inf if number > 100 else number  # timm: > 100 means uniform
            elif key == "mmax":
                values["magnitude_max"] = number
            elif key == "inc":
                values["increasing"] = bool(number)
            elif key == "m":
                values["magnitude"] = number
            elif key == "n":
                values["num_layers"] = int(number)
            else:
                values["prob"] = number
        parsed = cls(**values)
        if not parsed.increasing:
            raise ValueError(f"auto-augment {config!r}: only the increasing-severity op set ('inc1') is implemented")
        return parsed


class AugmentOp:
    """One RandAugment op: applied with probability ``prob`` at a magnitude drawn around ``magnitude``."""

    def __init__(self, name: str, config: RandAugmentConfig, fill: Tuple[int, ...], resample: int):
        self.name = name
        self.apply_fn, self.args_fn = RAND_AUGMENT_OPS[name]
        self.config = config
        self.fill = fill
        self.resample = resample

    def sample_magnitude(self) -> float:
        """timm's magnitude noise: normal around the magnitude (uniform on [0, m] for an infinite std),
        clipped to ``[0, magnitude_max]``."""
        magnitude = self.config.magnitude
        if self.config.magnitude_std == math.inf:
            magnitude = random.uniform(0, magnitude)
        elif self.config.magnitude_std > 0:
            magnitude = random.gauss(magnitude, self.config.magnitude_std)
        return max(0.0, min(magnitude, self.config.magnitude_max))

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.config.prob < 1.0 and random.random() > self.config.prob:
            return image
        return self.apply_fn(image, self.fill, self.resample, *self.args_fn(self.sample_magnitude()))

    def __repr__(self) -> str:
        return f"AugmentOp({self.name})"


class RandAugment:
    """``num_layers`` ops drawn with replacement (numpy's generator, as timm), each applied in turn."""

    def __init__(self, config: RandAugmentConfig, fill: Tuple[int, ...], resample: int = Image.BICUBIC):
        self.config = config
        self.ops = [AugmentOp(name, config, fill, resample) for name in INCREASING_OPS]

    def __call__(self, image: Image.Image) -> Image.Image:
        for op in np.random.choice(self.ops, self.config.num_layers, replace=True):
            image = op(image)
        return image

    def __repr__(self) -> str:
        return f"RandAugment(n={self.config.num_layers}, m={self.config.magnitude}, mstd={self.config.magnitude_std})"


# -- OFA's RandomAugment (OFA utils/vision_helper.py), on PIL ------------------------------------------------

#: OFA's op list for ImageNet, its level (7 of 10), fill and translation constant.
OFA_RANDOM_AUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                          "TranslateX", "TranslateY", "Rotate")
OFA_RANDOM_AUGMENT_LEVEL = 7
OFA_FILL = (128, 128, 128)
OFA_TRANSLATE_PX = 10.0


class OFARandomAugment:
    """OFA's second augmentation stage: ``num_ops`` names drawn with replacement, each applied with
    probability 0.5 at ``level``/10: enhance factor level/10*1.8+0.1, shear +-0.3*level/10, translate
    +-10*level/10 px, rotate +-30*level/10 degrees, bilinear, grey fill (OFA draws every coin from numpy)."""

    def __init__(self, num_ops: int = 2, level: float = OFA_RANDOM_AUGMENT_LEVEL,
                 ops: Sequence[str] = OFA_RANDOM_AUGMENT_OPS):
        unknown = sorted(set(ops) - set(OFA_RANDOM_AUGMENT_OPS))
        if unknown:
            raise ValueError(f"OFA RandomAugment: unknown ops {unknown} (known: {', '.join(OFA_RANDOM_AUGMENT_OPS)})")
        self.num_ops = num_ops
        self.level = level
        self.ops = tuple(ops)

    def signed(self, value: float, negate_above_half: bool = True) -> float:
        """OFA's sign coin: shear and translate negate when the draw is above 0.5, rotate when below."""
        draw = np.random.random()
        return -value if (draw > 0.5 if negate_above_half else draw < 0.5) else value

    def apply(self, name: str, image: Image.Image) -> Image.Image:
        fraction = self.level / LEVEL_DENOM
        if name == "Identity":
            return image
        if name == "AutoContrast":
            return ImageOps.autocontrast(image)
        if name == "Equalize":
            return ImageOps.equalize(image)
        if name == "Brightness":
            return ImageEnhance.Brightness(image).enhance(fraction * 1.8 + 0.1)
        if name == "Sharpness":
            return ImageEnhance.Sharpness(image).enhance(fraction * 1.8 + 0.1)
        if name == "Rotate":
            return image.rotate(self.signed(fraction * 30.0, negate_above_half=False), resample=Image.BILINEAR,
                                fillcolor=OFA_FILL)
        if name in ("ShearX", "ShearY"):
            # OpenCV warps with the forward map [[1, s], [0, 1]]; PIL takes the inverse, [[1, -s], [0, 1]]
            shear = -self.signed(fraction * 0.3)
            matrix = (1, shear, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, shear, 1, 0)
            return _affine(image, matrix, OFA_FILL, Image.BILINEAR)
        offset = self.signed(fraction * OFA_TRANSLATE_PX)  # output (x, y) shows input (x + offset, y)
        matrix = (1, 0, offset, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, offset)
        return _affine(image, matrix, OFA_FILL, Image.BILINEAR)

    def __call__(self, image: Image.Image) -> Image.Image:
        for name in np.random.choice(self.ops, self.num_ops):
            if np.random.random() > 0.5:
                continue
            image = self.apply(str(name), image)
        return image

    def __repr__(self) -> str:
        return f"OFARandomAugment(n={self.num_ops}, level={self.level})"


# -- crop, flip, tensor, erasing (timm/data/transforms.py, random_erasing.py; torchvision) -------------------


class RandomResizedCrop:
    """timm's RandomResizedCropAndInterpolation: area fraction ~ U(scale), log aspect ~ U(log ratio), up to
    10 tries, else the centre crop closest to the ratio range; the crop is resized to ``size x size``."""

    def __init__(self, size: int, scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), resample: int = Image.BICUBIC):
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.resample = resample

    def crop_box(self, width: int, height: int) -> Tuple[int, int, int, int]:
        """``(top, left, crop height, crop width)``."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = random.uniform(*self.scale) * area
            aspect = math.exp(random.uniform(*log_ratio))
            crop_w = int(round(math.sqrt(target_area * aspect)))
            crop_h = int(round(math.sqrt(target_area / aspect)))
            if crop_w <= width and crop_h <= height:
                return random.randint(0, height - crop_h), random.randint(0, width - crop_w), crop_h, crop_w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            crop_w, crop_h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            crop_w, crop_h = int(round(height * max(self.ratio))), height
        else:
            crop_w, crop_h = width, height
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w

    def __call__(self, image: Image.Image) -> Image.Image:
        top, left, crop_h, crop_w = self.crop_box(*image.size)
        return image.crop((left, top, left + crop_w, top + crop_h)).resize((self.size, self.size), self.resample)


class RandomHorizontalFlip:
    """torchvision's flip: mirrored when a torch uniform draw is below ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.FLIP_LEFT_RIGHT) if torch.rand(1).item() < self.p else image


def normalized_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """ToTensor (``[3, H, W]`` in [0, 1]) then Normalize: ``(pixels / 255 - mean) / std``."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1).copy())
    return pixels.div_(255).sub_(torch.tensor(mean).view(3, 1, 1)).div_(torch.tensor(std).view(3, 1, 1))


class RandomErasing:
    """timm's RandomErasing on a normalised ``[C, H, W]`` tensor, in place: with probability ``probability``
    one box of area fraction ~ U(min_area, max_area) and log aspect ~ U(log min_aspect, -log min_aspect)
    (up to 10 tries to fit) is filled with per-pixel standard normal noise (``pixel``), one normal colour
    per channel (``rand``) or zeros (``const``)."""

    MODES = ("pixel", "rand", "const")

    def __init__(self, probability: float = OFA_ERASE_PROB, mode: str = "pixel", min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3):
        if mode not in self.MODES:
            raise ValueError(f"random erasing mode {mode!r}: expected one of {', '.join(self.MODES)}")
        self.probability = probability
        self.mode = mode
        self.min_area = min_area
        self.max_area = max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def erase_box(self, height: int, width: int) -> Optional[Tuple[int, int, int, int]]:
        """``(top, left, h, w)`` of the box to erase, or None (no erasing this time, or no fitting box)."""
        if random.random() > self.probability:
            return None
        for _ in range(10):
            target_area = random.uniform(self.min_area, self.max_area) * height * width
            aspect = math.exp(random.uniform(*self.log_aspect))
            box_h = int(round(math.sqrt(target_area * aspect)))
            box_w = int(round(math.sqrt(target_area / aspect)))
            if box_w < width and box_h < height:
                return random.randint(0, height - box_h), random.randint(0, width - box_w), box_h, box_w
        return None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        channels, height, width = pixels.shape
        box = self.erase_box(height, width)
        if box is not None:
            top, left, box_h, box_w = box
            if self.mode == "pixel":
                fill = torch.empty((channels, box_h, box_w), dtype=pixels.dtype).normal_()
            elif self.mode == "rand":
                fill = torch.empty((channels, 1, 1), dtype=pixels.dtype).normal_()
            else:
                fill = torch.zeros((channels, 1, 1), dtype=pixels.dtype)
            pixels[:, top:top + box_h, left:left + box_w] = fill
        return pixels


# -- the pipelines -----------------------------------------------------------------------------------------


class TrainTransform:
    """PIL image -> normalised ``[3, P, P]`` tensor through OFA's ImageNet training pipeline."""

    def __init__(self, stages: List[Callable], backend: str):
        self.stages = stages
        #: Which implementation runs: ``timm <version>`` or ``ofa_el PIL (...)``.
        self.backend = backend

    def __call__(self, image: Image.Image) -> torch.Tensor:
        result = image.convert("RGB")
        for stage in self.stages:
            result = stage(result)
        return result

    def __repr__(self) -> str:
        return f"TrainTransform({self.backend}: {' -> '.join(type(s).__name__ for s in self.stages)})"


def timm_unavailable_reason() -> Optional[str]:
    """None when timm's transforms import, else why not (the exception, one line)."""
    try:
        import timm.data  # noqa: F401  (timm imports torchvision)
    except Exception as err:  # noqa: BLE001  (a broken torchvision raises RuntimeError, not ImportError)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


def _timm_stages(patch_image_size: int, mean: Sequence[float], std: Sequence[float]) -> List[Callable]:
    from timm.data import create_transform

    timm_list = create_transform(input_size=patch_image_size, is_training=True, color_jitter=0.4,
                                 auto_augment=OFA_RAND_AUGMENT, interpolation="bicubic", re_prob=OFA_ERASE_PROB,
                                 re_mode="pixel", re_count=1, mean=mean, std=std).transforms
    # OFA slices timm's list by position: [crop, flip, randaugment] + OFA's stage + [to-tensor, normalise, erase]
    if len(timm_list) != 6:
        raise RuntimeError(f"timm's create_transform returned {len(timm_list)} stages ({timm_list}); OFA's "
                           "pipeline expects 6 (crop, flip, RandAugment, to-tensor, normalise, erasing)")
    return timm_list[:3] + [OFARandomAugment()] + timm_list[3:]


def _pil_stages(patch_image_size: int, mean: Sequence[float], std: Sequence[float]) -> List[Callable]:
    fill = tuple(min(255, round(255 * m)) for m in mean)  # timm fills with the mean colour
    return [RandomResizedCrop(patch_image_size), RandomHorizontalFlip(0.5),
            RandAugment(RandAugmentConfig.parse(OFA_RAND_AUGMENT), fill), OFARandomAugment(),
            lambda image: normalized_tensor(image, mean, std), RandomErasing(OFA_ERASE_PROB, mode="pixel")]


#: ``--train-augmentation`` choices: OFA's pipeline, or none (training images resized as in evaluation).
TRAIN_AUGMENTATIONS = ("ofa", "none")
#: ``--augmentation-backend`` choices.
AUGMENTATION_BACKENDS = ("auto", "timm", "pil")


def build_train_transform(patch_image_size: int, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                          std: Sequence[float] = IMAGENET_DEFAULT_STD, backend: str = "auto") -> TrainTransform:
    """OFA's ImageNet training transform: timm's (``auto`` when it imports, or ``timm``) or this module's."""
    if backend not in AUGMENTATION_BACKENDS:
        raise OptionError(f"--augmentation-backend {backend!r}: expected one of {', '.join(AUGMENTATION_BACKENDS)}")
    reason = timm_unavailable_reason() if backend != "pil" else "--augmentation-backend pil"
    if reason is None:
        import timm

        return TrainTransform(_timm_stages(patch_image_size, mean, std), f"timm {timm.__version__}")
    if backend == "timm":
        raise OptionError(f"--augmentation-backend timm: timm does not import here ({reason})")
    return TrainTransform(_pil_stages(patch_image_size, mean, std), f"ofa_el PIL ({reason})")


def describe_augmentation_backend() -> str:
    """What ``--augmentation-backend auto`` picks here, for a start-up line."""
    reason = timm_unavailable_reason()
    if reason is None:
        import timm

        return f"timm {timm.__version__}"
    return f"ofa_el PIL (timm: {reason})"


def eval_transform(image: Image.Image, patch_image_size: int, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                   std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """Evaluation: bicubic resize to ``P x P`` (aspect not kept, no crop), to tensor, normalise."""
    return normalized_tensor(image.convert("RGB").resize((patch_image_size, patch_image_size), Image.BICUBIC),
                             mean, std)
