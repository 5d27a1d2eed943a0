"""Location bins, box alignment after the P x P resize, IoU / Acc@0.5 on hand-made cases."""
import base64
import io
import random

import pytest
import torch
from PIL import Image, ImageDraw

from ofa_el.data.boxes import bins_to_box, box_iou, box_to_bins, grounding_hits
from ofa_el.data.refcoco_dataset import RefcocoDataset
from ofa_el.data.scoring import grounding_metrics
from ofa_el.data.text import TextCodec
from ofa_el.synthetic.bpe import write_bpe

torch.set_num_threads(1)


def quantise(box, width, height, size, num_bins, max_image_size):
    ratios = torch.tensor([size / width, size / height] * 2, dtype=torch.float32)
    return box_to_bins(torch.tensor(box, dtype=torch.float32) * ratios, num_bins, max_image_size), ratios


def test_ofa_worked_example():
    # OFA's quantisation (OFA's data/mm_data/refcoco_dataset.py, with the division in utils/transforms.py's
    # Normalize): scale the box with the P x P resize, divide by max_image_size, bin = round(coord * (num_bins - 1)).
    # Here a 640x480 image, P = max_image_size = 512, 1000 bins: x0 230.79 -> 184.63 -> 0.3606 -> bin 360.
    bins, ratios = quantise([230.79, 121.75, 423.66, 463.06], 640, 480, 512, 1000, 512)
    assert bins.tolist() == [360, 253, 661, 964]
    box = bins_to_box(bins, 1000, 512, ratios[0], ratios[1])
    assert torch.allclose(box, torch.tensor([230.63, 121.56, 423.46, 463.18]), atol=0.01)


@pytest.mark.parametrize("size,num_bins", [(512, 1000), (64, 100), (30, 1000)])
def test_bins_round_trip_within_half_a_bin(size, num_bins):
    rng = random.Random(size)
    for _ in range(200):
        width, height = rng.randint(20, 900), rng.randint(20, 900)
        x0, x1 = sorted(rng.uniform(0, width) for _ in range(2))
        y0, y1 = sorted(rng.uniform(0, height) for _ in range(2))
        bins, ratios = quantise([x0, y0, x1, y1], width, height, size, num_bins, size)
        assert 0 <= bins.min() and bins.max() < num_bins
        back = bins_to_box(bins, num_bins, size, ratios[0], ratios[1])
        half_bin = torch.tensor([width, height, width, height]) / (num_bins - 1) / 2
        assert (back - torch.tensor([x0, y0, x1, y1])).abs().le(half_bin * 1.001 + 1e-4).all()


def test_quantisation_rounds_half_to_even():
    # 0.5 and 2.5 bins exactly: torch.round gives 0 and 2 (OFA relies on torch's rounding).
    assert box_to_bins(torch.tensor([0.5, 2.5, 3.5, 1.0]), num_bins=11, max_image_size=10.0).tolist() == [0, 2, 4, 1]


def test_resize_keeps_the_box_on_the_drawn_rectangle(tmp_path):
    write_bpe(str(tmp_path / "bpe"), ["a blue box", "the blue box"], vocab_size=300)
    codec = TextCodec(str(tmp_path / "bpe"), num_bins=1000)
    width, height, box = 90, 40, (20, 6, 71, 31)  # non-square image: x and y scale differently
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(0, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    row = ["1", "1", "the blue box", ",".join(map(str, box)), base64.b64encode(buffer.getvalue()).decode()]
    (tmp_path / "r.tsv").write_text("\t".join(row) + "\n")
    size = 64
    sample = RefcocoDataset(str(tmp_path / "r.tsv"), "train", codec, patch_image_size=size, slice_id=0,
                            slice_count=1)[0]
    start = codec.dictionary.index("<bin_0>")
    bins = sample["target"][:4] - start
    resized_box = bins.float() / 999 * size  # bins -> pixels of the P x P input
    blue = (sample["patch_image"][2] > 0.5) & (sample["patch_image"][0] < -0.5)  # normalised to [-1, 1]
    ys, xs = torch.nonzero(blue, as_tuple=True)
    # every clearly blue pixel lies in the box (one pixel of bicubic blur allowed) ...
    assert xs.min() >= resized_box[0] - 1 and xs.max() + 1 <= resized_box[2] + 1
    assert ys.min() >= resized_box[1] - 1 and ys.max() + 1 <= resized_box[3] + 1
    # ... and the box interior is blue
    x0, y0, x1, y1 = resized_box.round().long().tolist()
    assert blue[y0 + 1:y1 - 1, x0 + 1:x1 - 1].all()


def test_iou_on_hand_made_boxes():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 4, 1]])
    b = torch.tensor([[0.0, 0, 2, 2], [1, 0, 3, 2], [3, 3, 4, 4], [0, 0, 1, 1], [0, 0, 3, 1]])
    iou = box_iou(a, b)
    # same box; half-overlap: 2 / (4 + 4 - 2); disjoint; disjoint on both axes (OFA's raw product
    # of two negative sides would be +16); 3 / 4.
    assert torch.allclose(iou, torch.tensor([1.0, 1 / 3, 0.0, 0.0, 0.75]), atol=1e-5)
    assert grounding_hits(a, b).tolist() == [True, False, False, False, True]


def test_acc_at_half_needs_more_than_exactly_half():
    # IoU = 1 / (2 + 1e-6), just under 0.5 because of OFA's epsilon: not a hit.
    assert not grounding_hits(torch.tensor([0.0, 0, 2, 1]), torch.tensor([0.0, 0, 1, 1])).item()


def test_grounding_metrics_count_each_sample_once():
    records = [("a", [0, 0, 2, 2], [0, 0, 2, 2]), ("b", [0, 0, 2, 2], [1, 0, 3, 2]),
               ("c", [0, 0, 4, 1], [0, 0, 3, 1]), ("a", [0, 0, 2, 2], [0, 0, 2, 2])]  # "a" gathered twice
    metrics = grounding_metrics(records)
    assert metrics["count"] == 3
    assert metrics["acc"] == pytest.approx(2 / 3)
    assert metrics["miou"] == pytest.approx((1 + 1 / 3 + 0.75) / 3, abs=1e-5)
    with pytest.raises(ValueError, match="sample id 'a' has two different"):
        grounding_metrics(records + [("a", [0, 0, 1, 1], [0, 0, 2, 2])])
