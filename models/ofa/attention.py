"""Multi-head attention with OFA's additive position bias, per-head scaling and incremental state.

The position bias, the future mask and the key padding are folded into one additive float mask, and
attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels: no
``[B, H, T_q, T_k]`` probabilities kept for backward on CUDA, none materialised at inference on CPU).

The position bias comes in two parts: a ``base`` (OFA's absolute bias, one tensor that every layer shares)
and, optionally, a relative part given as a small learned ``table`` ``[N, H]`` and a bucket ``index``
``[B or 1, T_q, T_k]`` into it (:func:`position_bias` adds them). Kept apart, a layer needs no bias tensor of
its own for backward: the table and the index are small, and the base is shared.

SDPA cannot serve one case: training on CPU with a position bias that needs a gradient (SDPA's CPU kernel
takes no mask that does; it would fall back to its math kernel, which keeps the probabilities for
backward like OFA's code). There :class:`LeanAttention` computes OFA's ``softmax(q k^T + mask) v`` and
keeps only the row log-sum-exps, recomputing the probabilities (and the bias, from its parts) in
backward: no ``[B, H, T_q, T_k]`` tensor kept per layer (the probabilities are about 160 MB per encoder
layer for ofa_base at 480 px, batch 4, its bias 40 MB), for one more ``q k^T`` in backward. It works on a
few heads at a time, so its transient score tensors stay near ``CHUNK_BYTES``. With attention dropout on
CPU (no recipe sets it) the explicit path keeps OFA's computation as it is, probabilities stored.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules import FairseqDropout
from torch import Tensor, nn

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]

#: About how many bytes of float32 scores :class:`LeanAttention` holds at a time (it takes heads in groups).
CHUNK_BYTES = 64 * 2 ** 20


def position_bias(base: Optional[Tensor], table: Optional[Tensor] = None, index: Optional[Tensor] = None,
                  heads: slice = slice(None)) -> Optional[Tensor]:
    """``base + table[index]`` for the heads ``heads``: ``[B or 1, h, T_q, T_k]``.

    ``base`` is ``[B or 1, H, T_q, T_k]``, ``table`` ``[N, H]``, ``index`` ``[B or 1, T_q, T_k]``. The base is added
    first, as OFA adds the relative bias into a copy of the absolute one (so the sums are OFA's)."""
    if table is None:
        return base if base is None else base[:, heads]
    relative = table[:, heads][index].permute(0, 3, 1, 2)
    return relative if base is None else base[:, heads] + relative


def constant_mask(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                  dtype: torch.dtype) -> Optional[Tensor]:
    """The future mask with padded keys at ``-inf``: 0 or ``-inf``, ``[B or 1, 1, T_q or 1, T_k]`` (or the
    future mask's ``[T_q, T_k]`` alone), broadcast over heads."""
    mask = attn_mask
    if key_padding_mask is not None:
        padded = key_padding_mask[:, None, None, :].to(torch.bool)
        base = mask if mask is not None else torch.zeros((), dtype=dtype, device=padded.device)
        mask = torch.where(padded, float("-inf"), base)
    return mask if mask is None else mask.to(dtype)


def combined_mask(bias: Optional[Tensor], constant: Optional[Tensor]) -> Optional[Tensor]:
    """SDPA's one float mask: ``bias + constant``. OFA adds the bias, then the future mask, then fills padded
    keys with ``-inf``; the constant part is 0 or ``-inf``, so adding it to the bias first gives the same scores."""
    if bias is None or constant is None:
        return bias if constant is None else constant
    return bias + constant


def attention_path(query: Tensor, bias_parts: Sequence[Optional[Tensor]], dropout: float) -> str:
    """``sdpa`` unless SDPA has no fused kernel for the call (on CPU, a bias that needs a gradient); then
    ``lean`` (:class:`LeanAttention`), or ``explicit`` with attention dropout. ``bias_parts``: the bias's
    learned inputs (base, table)."""
    needs_grad = any(part is not None and part.requires_grad for part in bias_parts)
    if not (query.device.type == "cpu" and needs_grad and torch.is_grad_enabled()):
        return "sdpa"
    return "lean" if dropout == 0.0 else "explicit"


def head_chunks(query: Tensor, key_len: int) -> List[slice]:
    """Groups of heads whose float32 ``[B, h, T_q, T_k]`` scores take about ``CHUNK_BYTES`` (at least one head)."""
    per_head = query.size(0) * query.size(2) * key_len * 4
    size = max(1, CHUNK_BYTES // per_head)
    return [slice(start, min(start + size, query.size(1))) for start in range(0, query.size(1), size)]


def explicit_attention(scaled_query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor],
                       dropout: nn.Module) -> Tensor:
    """OFA's computation: scores in the model's dtype, the softmax in float32, then dropout: [B, H, T_q, D]."""
    scores = torch.matmul(scaled_query, key.transpose(2, 3))
    if mask is not None:
        scores = scores + mask
    probs = dropout(torch.softmax(scores.float(), dim=-1).type_as(scores))
    return torch.matmul(probs, value)


class LeanAttention(torch.autograd.Function):
    """``softmax(q k^T + bias + constant) v`` (``q`` already scaled, no dropout) that saves the row
    log-sum-exps instead of the probabilities and recomputes them in backward (the flash-attention
    backward, unfused), a group of heads at a time (:func:`head_chunks`).

    The bias is :func:`position_bias` of ``base`` (``[B or 1, H, T_q, T_k]``), ``table`` and ``index`` (or None,
    None: the base alone), recomputed in backward from them; ``base`` and ``table`` get gradients, summed back to
    their shapes. ``constant`` (:func:`constant_mask`, or None) is added after the bias, as OFA does, and needs
    none. What is saved is the inputs as they are: a base shared by the layers and the batch costs no layer
    anything of its own."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, base: Tensor, table: Optional[Tensor],
                index: Optional[Tensor], constant: Optional[Tensor]) -> Tensor:
        outs, log_sum_exps = [], []
        for heads in head_chunks(query, key.size(2)):
            scores = LeanAttention._scores(query, key, base, table, index, constant, heads)
            log_sum_exp = torch.logsumexp(scores, dim=-1, keepdim=True)
            probs = scores.sub_(log_sum_exp).exp_().to(query.dtype)
            outs.append(torch.matmul(probs, value[:, heads]))
            log_sum_exps.append(log_sum_exp)
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        log_sum_exp = torch.cat(log_sum_exps, dim=1) if len(log_sum_exps) > 1 else log_sum_exps[0]
        ctx.save_for_backward(query, key, value, base, table, index, constant, out, log_sum_exp)
        return out

    @staticmethod
    def _scores(query: Tensor, key: Tensor, base: Tensor, table: Optional[Tensor], index: Optional[Tensor],
                constant: Optional[Tensor], heads: slice) -> Tensor:
        """float32 scores of ``heads``; the softmax's input, computed in place as far as the dtypes allow."""
        scores = torch.matmul(query[:, heads], key[:, heads].transpose(2, 3))
        scores.add_(position_bias(base, table, index, heads))
        if constant is not None:
            scores.add_(constant)
        return scores.float()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        query, key, value, base, table, index, constant, out, log_sum_exp = ctx.saved_tensors
        want_base, want_table = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        grads: Dict[str, List[Tensor]] = {"query": [], "key": [], "value": [], "base": [], "table": []}
        for heads in head_chunks(query, key.size(2)):
            scores = LeanAttention._scores(query, key, base, table, index, constant, heads)
            probs = scores.sub_(log_sum_exp[:, heads]).exp_().to(query.dtype)
            head_grad = grad_out[:, heads]
            grads["value"].append(torch.matmul(probs.transpose(2, 3), head_grad))
            grad_probs = torch.matmul(head_grad, value[:, heads].transpose(2, 3))
            row_dot = (head_grad * out[:, heads]).sum(-1, keepdim=True)  # sum_j p_j dp_j, the softmax's shift
            grad_scores = grad_probs.sub_(row_dot).mul_(probs)
            grads["query"].append(torch.matmul(grad_scores, key[:, heads]))
            grads["key"].append(torch.matmul(grad_scores.transpose(2, 3), query[:, heads]))
            if want_base or want_table:
                rows = max(base.size(0), index.size(0) if index is not None else 1)
                grad_bias = grad_scores.sum_to_size(rows, *grad_scores.shape[1:])
                if want_base:
                    grads["base"].append(grad_bias.sum_to_size(base[:, heads].shape))
                if want_table:
                    flat_index = index.expand(rows, -1, -1).reshape(-1)
                    grads["table"].append(grad_bias.new_zeros(table.size(0), grad_bias.size(1)).index_add_(
                        0, flat_index, grad_bias.permute(0, 2, 3, 1).reshape(-1, grad_bias.size(1))))

        def joined(name: str) -> Optional[Tensor]:
            parts = grads[name]
            return None if not parts else torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

        return (joined("query"), joined("key"), joined("value"), joined("base"),
                joined("table").to(table.dtype) if want_table else None, None, None)


@with_incremental_state
class OFAAttention(nn.Module):
    """``softmax(q k^T / sqrt(d * scale_factor) + bias + mask) v``, heads optionally rescaled (``c_attn``).

    ``attn_bias`` is the absolute + relative position bias. For decoding, keys
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
                attn_mask: Optional[Tensor] = None, attn_bias: Optional[Tensor] = None,
                rel_table: Optional[Tensor] = None, rel_index: Optional[Tensor] = None) -> Tuple[Tensor, None]:
        """The position bias is ``attn_bias`` (``[B or 1, H, T_q, T_k]``: one row serves every sample when positions
        are shared) plus ``rel_table[rel_index]`` when a table is given (:func:`position_bias`)."""
        tgt_len, bsz, _ = query.shape
        q = self._heads(self.q_proj(query), bsz)
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
            out = self._shared_key_attention(q * self.scaling, k, v, key_padding_mask,
                                             position_bias(attn_bias, rel_table, rel_index))
            return self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)), None
        constant = constant_mask(attn_mask, key_padding_mask, q.dtype)
        dropout = self.dropout_module.p if self.training or self.dropout_module.apply_during_inference else 0.0
        path = attention_path(q, (attn_bias, rel_table), dropout)
        if path == "lean":
            if attn_bias is None:
                raise ValueError("the lean attention path needs the position bias's base (attn_bias)")
            out = LeanAttention.apply(q * self.scaling, k, v, attn_bias, rel_table, rel_index, constant)
        else:
            mask = combined_mask(position_bias(attn_bias, rel_table, rel_index), constant)
            if path == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scaling)
            else:
                out = explicit_attention(q * self.scaling, k, v, mask, self.dropout_module)
        if self.c_attn is not None:
            out = out * self.c_attn.view(1, -1, 1, 1)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        return self.out_proj(out), None

    def _shared_key_attention(self, scaled_query: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor],
                              attn_bias: Optional[Tensor]) -> Tensor:
        """Cross-attention of ``G`` query rows per key row: q ``[B*G, H, T, D]`` (rows of key row ``b`` are
        ``b*G .. b*G+G-1``), k/v ``[B, H, S, D]``, bias ``[B or 1, H, T, S]``, padding ``[B, S]`` -> ``[B*G, H, T, D]``.

        All-candidate scoring decodes every candidate answer of a sample over the same encoder output: the
        queries of one sample's candidates attend its keys in one matmul, so the encoder output is neither
        copied per candidate nor projected to keys and values per candidate (the cost that dominates a
        decoder pass over an image's ~900 encoder positions). The bias is broadcast over the group, which
        SDPA's one mask could not do without a copy per candidate; this path serves inference only.
        """
        rows, heads, tgt_len, head_dim = scaled_query.shape
        key_rows, src_len = k.size(0), k.size(2)
        if rows % key_rows:
            raise ValueError(f"{rows} query rows cannot share {key_rows} encoder rows evenly")
        group = rows // key_rows
        q = scaled_query.view(key_rows, group, heads, tgt_len, head_dim).transpose(1, 2).reshape(
            key_rows, heads, group * tgt_len, head_dim)
        scores = torch.matmul(q, k.transpose(2, 3)).view(key_rows, heads, group, tgt_len, src_len)
        if attn_bias is not None:
            scores = scores + attn_bias.unsqueeze(2)
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
