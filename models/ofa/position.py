"""OFA's relative-position buckets (fixed index tables; the learned values are per layer)."""
import math

import torch
from torch import Tensor

#: OFA hard-codes the token bucket table to 1024 x 1024, whatever --max-source-positions says.
TOKEN_BUCKET_TABLE_SIZE = 1024


def token_rel_pos_buckets(bucket_size: int, max_position: int = TOKEN_BUCKET_TABLE_SIZE) -> Tensor:
    """[max_position, max_position] bucket ids in [0, 2 * bucket_size - 1): exact offsets near the
    diagonal (|d| <= bucket_size / 2), log-spaced buckets further away."""
    context = torch.arange(max_position)[:, None]
    memory = torch.arange(max_position)[None, :]
    relative = context - memory
    mid = bucket_size // 2
    near = (relative < mid) & (relative > -mid)
    magnitude = torch.where(near, torch.full_like(relative, mid - 1), relative.abs())
    log_bucket = torch.ceil(torch.log(magnitude / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(magnitude.le(mid), relative, log_bucket.int() * torch.sign(relative))
    return bucket.long() + bucket_size - 1


def image_rel_pos_buckets(bucket_size: int) -> Tensor:
    """[S^2 + 1, S^2 + 1] bucket ids for patches on an S x S grid (row-major, offset by 1); row and
    column 0 are reserved ids (the last three of the table)."""
    num_relative = (2 * bucket_size - 1) ** 2 + 3
    coords = torch.stack(torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (bucket_size - 1)
    index = torch.zeros((bucket_size * bucket_size + 1,) * 2, dtype=torch.long)
    index[1:, 1:] = relative[:, :, 0] * (2 * bucket_size - 1) + relative[:, :, 1]
    index[0, :] = num_relative - 3
    index[:, 0] = num_relative - 2
    index[0, 0] = num_relative - 1
    return index


def image_position_ids(height: int, width: int, bucket_size: int, device=None) -> Tensor:
    """Row-major grid ids ``row * bucket_size + col + 1`` of an H x W patch grid."""
    rows = torch.arange(height, device=device)[:, None] * bucket_size
    cols = torch.arange(width, device=device)[None, :]
    return (rows + cols + 1).view(-1)
