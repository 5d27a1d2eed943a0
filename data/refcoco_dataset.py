"""RefCOCO / RefCOCO+ / RefCOCOg samples, preprocessed as OFA's refcoco task does
(OFA's data/mm_data/refcoco_dataset.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from ..errors import InvalidDataError, OptionError
from .boxes import box_to_bins
from .ofa_dataset import BASE_BATCH_EXTRAS, OFADataset, RowParser, image_to_tensor
from .text import TextCodec, pre_caption

#: Encoder text; ``{}`` is the cleaned referring expression (straight quotes, one space inside each).
REFCOCO_PROMPT = ' which region does the text " {} " describe?'
#: OFA's refcoco defaults: ``--selected-cols`` (uniq-id, image, text, region) and ``--patch-image-size``.
REFCOCO_SELECTED_COLS = "0,4,2,3"
REFCOCO_PATCH_IMAGE_SIZE = 512
#: Boxes converted from COCO's float x,y,w,h often end a fraction of a pixel outside the image;
#: up to this many pixels on any side they are clipped to the image, beyond it the row is invalid.
CLIP_TOLERANCE_PX = 1.0

Box = Tuple[float, float, float, float]


def parse_region(field: str, width: int, height: int) -> Tuple[Box, bool]:
    """``"x0,y0,x1,y1"`` (corners, original pixels) of a ``width x height`` image to
    ``(box clipped to the image, whether clipping changed it)``.

    ``ValueError`` says what is wrong: not four finite numbers, an inverted box, a box more
    than :data:`CLIP_TOLERANCE_PX` outside the image (and by how much), or one that is empty
    once clipped.
    """
    shown = repr(field.strip())
    parts = field.strip().split(",")
    if len(parts) != 4:
        raise InvalidDataError(f"region column: expected 4 comma-separated numbers x0,y0,x1,y1, got {shown}")
    try:
        x0, y0, x1, y1 = (float(part) for part in parts)
    except ValueError:
        raise InvalidDataError(f"region column: expected 4 numbers x0,y0,x1,y1, got {shown}") from None
    if not all(math.isfinite(c) for c in (x0, y0, x1, y1)):
        raise InvalidDataError(f"region column: coordinates must be finite, got {shown}")
    if x1 <= x0:
        raise InvalidDataError(f"region column: x1 <= x0 in {shown} (corners x0,y0,x1,y1 expected, not x,y,w,h?)")
    if y1 <= y0:
        raise InvalidDataError(f"region column: y1 <= y0 in {shown}")
    overflows = [(-x0, f"x0 = {x0:g} < 0"), (-y0, f"y0 = {y0:g} < 0"),
                 (x1 - width, f"x1 = {x1:g} > width {width}"), (y1 - height, f"y1 = {y1:g} > height {height}")]
    overflow, where = max(overflows, key=lambda item: item[0])
    if overflow > CLIP_TOLERANCE_PX:
        raise InvalidDataError(f"region column: box {shown} lies outside the {width}x{height} image by {overflow:g} px "
                               f"({where}); only boxes within {CLIP_TOLERANCE_PX:g} px of the image are clipped")
    box = (x0, y0, x1, y1)
    right, bottom = float(width), float(height)
    clipped = (min(max(x0, 0.0), right), min(max(y0, 0.0), bottom), min(max(x1, 0.0), right), min(max(y1, 0.0), bottom))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise InvalidDataError(f"region column: box {shown} is empty once clipped to the {width}x{height} image")
    return clipped, clipped != box


@dataclass
class RefcocoRow:
    """A checked refcoco row: what the sample needs besides tokens (``region`` is the clipped box, float32)."""

    uniq_id: str
    image: Image.Image
    text: str
    region: torch.Tensor
    clipped: bool
    w_resize_ratio: torch.Tensor
    h_resize_ratio: torch.Tensor
    bins: List[int]


@dataclass
class RefcocoRowParser(RowParser):
    """The refcoco checks: image decodes, expression non-empty after cleaning, box parsed and
    clipped (:func:`parse_region`), and its bins within ``0..num_bins-1``.

    ``max_image_size`` defaults to ``patch_image_size`` (see :class:`RefcocoDataset`).
    """

    FIELDS: ClassVar[Tuple[str, ...]] = ("uniq_id", "image", "text", "region")

    patch_image_size: int = REFCOCO_PATCH_IMAGE_SIZE
    max_src_length: int = 128
    num_bins: int = 1000
    max_image_size: Optional[float] = None

    def __post_init__(self):
        super().__post_init__()
        if self.max_src_length < 1:
            raise OptionError(f"--max-src-length must be positive, got {self.max_src_length}")
        if self.num_bins < 2:
            raise OptionError(f"--num-bins must be at least 2, got {self.num_bins}")
        if self.max_image_size is None:
            self.max_image_size = self.patch_image_size
        if not self.max_image_size > 0:
            raise OptionError(f"--max-image-size must be positive, got {self.max_image_size}")
        self.max_image_size = float(self.max_image_size)

    def parse(self, fields: Dict[str, str]) -> RefcocoRow:
        image = self.load_image(fields["image"])
        width, height = image.size
        box, clipped = parse_region(fields["region"], width, height)
        region = torch.tensor(box, dtype=torch.float32)
        text = pre_caption(fields["text"], self.max_src_length)
        if not text:
            raise InvalidDataError(f"text column is empty after cleaning: {fields['text']!r}")

        size = self.patch_image_size
        w_resize_ratio = torch.tensor(size / width, dtype=torch.float32)
        h_resize_ratio = torch.tensor(size / height, dtype=torch.float32)
        scale = torch.stack([w_resize_ratio, h_resize_ratio, w_resize_ratio, h_resize_ratio])
        bins = box_to_bins(region * scale, self.num_bins, self.max_image_size)
        if bins.min() < 0 or bins.max() >= self.num_bins:
            raise InvalidDataError(
                f"region column: box {fields['region'].strip()!r} quantises to bins {bins.tolist()}, outside "
                f"0..{self.num_bins - 1} (--max-image-size {self.max_image_size:g} is below --patch-image-size {size})")
        return RefcocoRow(fields["uniq_id"], image, text, region, clipped, w_resize_ratio, h_resize_ratio,
                          bins.tolist())


class RefcocoDataset(OFADataset):
    """Rows ``(uniq-id, image, expression, region)``; the target is the box as four ``<bin_i>`` tokens.

    The image is resized to P x P (aspect not kept) and the box scaled with it; the box is
    then divided by ``max_image_size`` and quantised. OFA's default ``max_image_size`` is 512
    whatever P is, which for P != 512 leaves bins unused or out of range; here it defaults
    to P so the bins always span the image. A box at most 1 px outside the image is clipped
    to it and counted (:attr:`num_clipped_rows`); farther out, or with bins outside
    ``0..num_bins-1`` (OFA would silently train on ``<unk>``), the row is invalid.
    Samples carry ``w_resize_ratio``, ``h_resize_ratio`` (P/w, P/h) and the clipped
    ``region_coord`` (float32), which evaluation needs to map predicted bins back to pixels.
    """

    FIELDS = RefcocoRowParser.FIELDS
    SELECTED_COLS = REFCOCO_SELECTED_COLS
    #: OFA's refcoco batch names: evaluation maps bins back to pixels with the ratios and scores the box.
    BATCH_EXTRAS = {**BASE_BATCH_EXTRAS, "w_resize_ratio": "w_resize_ratios", "h_resize_ratio": "h_resize_ratios",
                    "region_coord": "region_coords"}

    def __init__(self, path: str, split: str, codec: TextCodec,
                 selected_cols: Union[None, str, Sequence[int]] = None,
                 patch_image_size: int = REFCOCO_PATCH_IMAGE_SIZE, max_src_length: int = 128, num_bins: int = 1000,
                 max_image_size: Optional[float] = None, **kwargs):
        parser = RefcocoRowParser(patch_image_size, max_src_length=max_src_length, num_bins=num_bins,
                                  max_image_size=max_image_size)
        super().__init__(path, split, codec, selected_cols, parser, **kwargs)
        if self.dictionary.index(f"<bin_{num_bins - 1}>") == self.dictionary.unk():
            raise OptionError(f"--num-bins {num_bins}: the dictionary has no <bin_{num_bins - 1}> token")
        self.max_src_length = max_src_length
        self.num_bins = num_bins
        self.max_image_size = parser.max_image_size

    def build_sample(self, index: int, fields: Dict[str, str]) -> Dict[str, Any]:
        row: RefcocoRow = self.parse(index, fields)
        if row.clipped:
            self.clipped_rows.increment()
        target_tokens = self.codec.encode_symbols(" ".join(f"<bin_{b}>" for b in row.bins))
        source = self.encode_source(REFCOCO_PROMPT.format(row.text))
        image = image_to_tensor(row.image, self.patch_image_size)
        sample = self.base_sample(row.uniq_id, image, source, target_tokens)
        sample.update(w_resize_ratio=row.w_resize_ratio, h_resize_ratio=row.h_resize_ratio, region_coord=row.region)
        return sample
