"""Multi-head attention with OFA's additive position bias, per-head scaling and incremental state."""
from typing import Dict, Optional, Tuple

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules import FairseqDropout
from torch import Tensor, nn

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


@with_incremental_state
class OFAAttention(nn.Module):
    """``softmax(q k^T / sqrt(d * scale_factor) + bias + mask) v``, heads optionally rescaled (``c_attn``).

    ``attn_bias`` is ``[B * H, T_q, T_k]`` (absolute + relative position bias). For decoding, keys
    and values of previous steps (self-attention) or of the encoder (``static_kv``) are cached.
    ``cross_attention`` marks the decoder's attention over the encoder: its cached keys and values
    are the same for every beam of a sentence, so beam search need not reorder them (see
    :meth:`reorder_incremental_state`).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, scale_factor: float = 2.0,
                 scale_heads: bool = False, kdim: Optional[int] = None, cross_attention: bool = False):
        super().__init__()
        self.cross_attention = cross_attention
        if embed_dim % num_heads:
            raise ValueError(f"embed dim {embed_dim} is not divisible by the {num_heads} attention heads")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None
        kdim = kdim or embed_dim
        self.k_proj = nn.Linear(kdim, embed_dim)
        self.v_proj = nn.Linear(kdim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout_module = FairseqDropout(dropout, module_name=self.__class__.__name__)

    def _heads(self, x: Tensor, bsz: int) -> Tensor:
        """[T, B, C] -> [B, H, T, D]"""
        return x.view(x.size(0), bsz, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def forward(self, query: Tensor, key: Optional[Tensor], key_padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[IncrementalState] = None, static_kv: bool = False,
                attn_mask: Optional[Tensor] = None, attn_bias: Optional[Tensor] = None) -> Tuple[Tensor, None]:
        tgt_len, bsz, _ = query.shape
        q = self._heads(self.q_proj(query) * self.scaling, bsz)
        saved = self._get_input_buffer(incremental_state) if incremental_state is not None else None
        if saved is not None and static_kv and "prev_key" in saved:
            k, v = saved["prev_key"], saved["prev_value"]  # the encoder's keys never change
        else:
            k, v = self._heads(self.k_proj(key), key.size(1)), self._heads(self.v_proj(key), key.size(1))
            if saved is not None and not static_kv and "prev_key" in saved:
                k = torch.cat([saved["prev_key"], k], dim=2)
                v = torch.cat([saved["prev_value"], v], dim=2)
        if incremental_state is not None:
            self._set_input_buffer(incremental_state, {"prev_key": k, "prev_value": v})
        if static_kv and k.size(0) != bsz:
            out = self._shared_key_attention(q, k, v, key_padding_mask, attn_bias)
            return self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)), None
        src_len = k.size(2)
        scores = torch.matmul(q, k.transpose(2, 3))  # [B, H, T_q, T_k]
        if attn_bias is not None:
            scores = scores + attn_bias.view(bsz, self.num_heads, tgt_len, src_len)
        if attn_mask is not None:
            scores = scores + attn_mask
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))
        probs = self.dropout_module(torch.softmax(scores.float(), dim=-1).type_as(scores))
        out = torch.matmul(probs, v)  # [B, H, T_q, D]
        if self.c_attn is not None:
            out = out * self.c_attn.view(1, -1, 1, 1)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        return self.out_proj(out), None

    def _shared_key_attention(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor],
                              attn_bias: Optional[Tensor]) -> Tensor:
        """Cross-attention of ``G`` query rows per key row: q ``[B*G, H, T, D]`` (rows of key row ``b`` are
        ``b*G .. b*G+G-1``), k/v ``[B, H, S, D]``, bias ``[B*H, T, S]``, padding ``[B, S]`` -> ``[B*G, H, T, D]``.

        All-candidate scoring decodes every candidate answer of a sample over the same encoder output: the
        queries of one sample's candidates attend its keys in one matmul, so the encoder output is neither
        copied per candidate nor projected to keys and values per candidate (the cost that dominates a
        decoder pass over an image's ~900 encoder positions).
        """
        rows, heads, tgt_len, head_dim = q.shape
        key_rows, src_len = k.size(0), k.size(2)
        if rows % key_rows:
            raise ValueError(f"{rows} query rows cannot share {key_rows} encoder rows evenly")
        group = rows // key_rows
        q = q.view(key_rows, group, heads, tgt_len, head_dim).transpose(1, 2).reshape(
            key_rows, heads, group * tgt_len, head_dim)
        scores = torch.matmul(q, k.transpose(2, 3)).view(key_rows, heads, group, tgt_len, src_len)
        if attn_bias is not None:
            scores = scores + attn_bias.view(key_rows, heads, 1, tgt_len, src_len)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, None, :].to(torch.bool), float("-inf"))
        probs = self.dropout_module(torch.softmax(scores.float(), dim=-1).type_as(scores))
        out = torch.matmul(probs.view(key_rows, heads, group * tgt_len, src_len), v)
        out = out.view(key_rows, heads, group, tgt_len, head_dim).transpose(1, 2).reshape(
            rows, heads, tgt_len, head_dim)
        return out * self.c_attn.view(1, -1, 1, 1) if self.c_attn is not None else out

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Follow the beam search's reordering of hypotheses.

        While the batch keeps its size, beam search only permutes the beams of each sentence, and the
        encoder's keys and values are identical across those beams: cross-attention skips that copy
        (as fairseq's attention does). When finished sentences leave the batch (``new_order`` is
        shorter), the rows must be selected.
        """
        saved = self._get_input_buffer(incremental_state)
        if saved and self.cross_attention and saved["prev_key"].size(0) == new_order.size(0):
            return
        if saved:
            self._set_input_buffer(incremental_state, {name: value.index_select(0, new_order)
                                                       for name, value in saved.items() if value is not None})

    def _get_input_buffer(self, incremental_state: Optional[IncrementalState]) -> Dict[str, Optional[Tensor]]:
        return self.get_incremental_state(incremental_state, "attn_state") or {}

    def _set_input_buffer(self, incremental_state: IncrementalState, buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, "attn_state", buffer)
