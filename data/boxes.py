"""Boxes for visual grounding: OFA's location bins and its IoU / Acc@0.5 criterion.

Boxes are ``(x0, y0, x1, y1)`` corners in pixels. A box is quantised after it has been
scaled to the resized image and divided by ``max_image_size`` (OFA divides by the option,
not by the resized size), then rounded half-to-even to one of ``num_bins`` bins.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

Number = Union[float, Tensor]


def box_to_bins(box: Tensor, num_bins: int, max_image_size: float) -> Tensor:
    """Bin index of each coordinate of a box given in resized-image pixels (float32, no clamping)."""
    normalised = box.to(torch.float32) / max_image_size
    return torch.round(normalised * (num_bins - 1)).long()


def bins_to_box(bins: Tensor, num_bins: int, max_image_size: float, w_resize_ratio: Number,
                h_resize_ratio: Number) -> Tensor:
    """Inverse of the quantisation, back to ORIGINAL-image pixels.

    ``bins`` is ``[..., 4]``; the ratios are scalars or broadcast over the leading dims.
    """
    resized = bins.to(torch.float32) / (num_bins - 1) * max_image_size
    w_ratio = torch.as_tensor(w_resize_ratio, dtype=torch.float32)
    h_ratio = torch.as_tensor(h_resize_ratio, dtype=torch.float32)
    scale = torch.stack([w_ratio, h_ratio, w_ratio, h_ratio], dim=-1)
    return resized / scale


def box_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise IoU of ``[..., 4]`` boxes in continuous coordinates (no +1 pixel), OFA's 1e-6 guard.

    The intersection sides are clamped at 0, so disjoint boxes score 0 (OFA multiplies the
    raw sides, which makes two negative sides look like an overlap; it only avoids counting
    that as a hit by also testing the sides, see :func:`grounding_hits`).
    """
    inter_w, inter_h = _intersection_sides(pred, target)
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    area_pred = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area_target = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
    return inter / (area_pred + area_target - inter + 1e-6)


def grounding_hits(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """Bool per box: IoU >= threshold with a non-empty intersection (OFA's Acc@0.5 hit)."""
    inter_w, inter_h = _intersection_sides(pred, target)
    return (box_iou(pred, target) >= threshold) & (inter_w > 0) & (inter_h > 0)


def _intersection_sides(pred: Tensor, target: Tensor):
    inter_w = torch.minimum(pred[..., 2], target[..., 2]) - torch.maximum(pred[..., 0], target[..., 0])
    inter_h = torch.minimum(pred[..., 3], target[..., 3]) - torch.maximum(pred[..., 1], target[..., 1])
    return inter_w, inter_h
