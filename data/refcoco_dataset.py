"""RefCOCO / RefCOCO+ / RefCOCOg samples, preprocessed as OFA's refcoco task does (spec §2.3)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .boxes import box_to_bins
from .ofa_dataset import OFADataset, image_to_tensor
from .text import TextCodec, pre_caption

#: Encoder text; ``{}`` is the cleaned referring expression (straight quotes, one space inside each).
REFCOCO_PROMPT = ' which region does the text " {} " describe?'


def parse_region(field: str) -> Tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (corners, original pixels) to floats; ``ValueError`` says what is wrong."""
    parts = field.strip().split(",")
    if len(parts) != 4:
        raise ValueError(f"region column: expected 4 comma-separated numbers x0,y0,x1,y1, got {field!r}")
    try:
        x0, y0, x1, y1 = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"region column: expected 4 numbers x0,y0,x1,y1, got {field!r}") from None
    if not all(math.isfinite(c) for c in (x0, y0, x1, y1)):
        raise ValueError(f"region column: coordinates must be finite, got {field!r}")
    if x1 <= x0:
        raise ValueError(f"region column: x1 <= x0 in {field!r} (corners x0,y0,x1,y1 expected, not x,y,w,h?)")
    if y1 <= y0:
        raise ValueError(f"region column: y1 <= y0 in {field!r}")
    return x0, y0, x1, y1


class RefcocoDataset(OFADataset):
    """Rows ``(uniq-id, image, expression, region)``; the target is the box as four ``<bin_i>`` tokens.

    The image is resized to P x P (aspect not kept) and the box scaled with it; the box is
    then divided by ``max_image_size`` and quantised. OFA's default ``max_image_size`` is 512
    whatever P is, which for P != 512 leaves bins unused or out of range; here it defaults
    to P so the bins always span the image. A box whose bins fall outside ``0..num_bins-1``
    (OFA would silently train on ``<unk>``) is an invalid row.
    Samples carry ``w_resize_ratio``, ``h_resize_ratio`` (P/w, P/h) and the raw
    ``region_coord`` (float32), which evaluation needs to map predicted bins back to pixels.
    """

    FIELDS = ("uniq_id", "image", "text", "region")

    def __init__(self, path: str, split: str, codec: TextCodec, selected_cols: Union[str, Sequence[int]] = "0,4,2,3",
                 patch_image_size: int = 512, max_src_length: int = 128, num_bins: int = 1000,
                 max_image_size: Optional[float] = None, **kwargs):
        super().__init__(path, split, codec, selected_cols, patch_image_size, **kwargs)
        if max_src_length < 1:
            raise ValueError(f"--max-src-length must be positive, got {max_src_length}")
        if num_bins < 2:
            raise ValueError(f"--num-bins must be at least 2, got {num_bins}")
        if self.dictionary.index(f"<bin_{num_bins - 1}>") == self.dictionary.unk():
            raise ValueError(f"--num-bins {num_bins}: the dictionary has no <bin_{num_bins - 1}> token")
        self.max_src_length = max_src_length
        self.num_bins = num_bins
        self.max_image_size = float(max_image_size if max_image_size is not None else patch_image_size)

    def build_sample(self, index: int, fields: Dict[str, str]) -> Dict[str, Any]:
        pil_image = self.load_image(index, fields["image"])
        width, height = pil_image.size
        try:
            region = torch.tensor(parse_region(fields["region"]), dtype=torch.float32)
        except ValueError as err:
            raise self.row_error(index, str(err)) from None
        text = pre_caption(fields["text"], self.max_src_length)
        if not text:
            raise self.row_error(index, f"text column is empty after cleaning: {fields['text']!r}")

        size = self.patch_image_size
        w_resize_ratio = torch.tensor(size / width, dtype=torch.float32)
        h_resize_ratio = torch.tensor(size / height, dtype=torch.float32)
        scale = torch.stack([w_resize_ratio, h_resize_ratio, w_resize_ratio, h_resize_ratio])
        bins = box_to_bins(region * scale, self.num_bins, self.max_image_size)
        if bins.min() < 0 or bins.max() >= self.num_bins:
            raise self.row_error(
                index, f"region {fields['region'].strip()!r} lies outside the {width}x{height} image "
                f"(bins {bins.tolist()}, valid 0..{self.num_bins - 1})")
        target_tokens = self.codec.encode_symbols(" ".join(f"<bin_{b}>" for b in bins.tolist()))
        source = self.encode_source(REFCOCO_PROMPT.format(text))
        sample = self.base_sample(fields["uniq_id"], image_to_tensor(pil_image, size), source, target_tokens)
        sample.update(w_resize_ratio=w_resize_ratio, h_resize_ratio=h_resize_ratio, region_coord=region)
        return sample
