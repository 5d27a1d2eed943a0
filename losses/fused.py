"""The fused driver: the same numbers as :func:`.token_loss.token_losses`, from logits, at CE's cost (torch only).

The reference path materialises log-probabilities, probabilities, every term and their autograd
graphs: about 7 logit-sized buffers for EL. Here the logits are read chunk by chunk (float32
accumulation for half-precision logits); for each chunk one pass yields every term's per-token value
and, when a gradient is wanted, the gradient itself, written once into one logit-sized buffer.
Backward only scales that buffer in place by the upstream gradient, the token weights and the
kept-token mask (token selection happens after the per-token values are known).

Per chunk the driver loops over the terms: each returns its :class:`.terms.ClosedForm` (value,
``H`` and the parts of ``h``), and the driver assembles ``g = h - p H`` for all of them at once,
writing into a buffer a term handed over (or into the probabilities) rather than a new one. A term
without a closed form falls back to chunked autograd: the chunk's logits are read again with
``requires_grad``, the term's summed value is differentiated, and the result is added to the rows.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .terms import Chunk, ClosedForm, RowValue, Term, Tokens, check_terms
from .token_loss import TokenLossOutput, ranking_of, select_tokens, term_statistics, token_losses

#: Elements of one chunk of logits (rows * V); chunks keep the temporaries small. On CPU a chunk
#: fits in cache; on a GPU each chunk costs ~20 kernel launches, so chunks are much larger there.
CHUNK_ELEMENTS = 1 << 21
GPU_CHUNK_ELEMENTS = 1 << 25
#: Columns per block in :func:`row_max`.
ARGMAX_BLOCK = 256


def compute_dtype(logits: Tensor) -> torch.dtype:
    """Half-precision logits are accumulated in float32; float64 stays float64."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


class _FusedTokenLoss(torch.autograd.Function):
    """Returns the precomputed per-token losses; backward scales the precomputed gradient in place."""

    @staticmethod
    def forward(ctx, logits, per_token, grad_buffer, row_scale):
        ctx.save_for_backward(grad_buffer, row_scale)
        ctx.used = False
        return per_token.clone()

    @staticmethod
    def backward(ctx, grad_out):
        grad_buffer, row_scale = ctx.saved_tensors
        if ctx.used:
            raise RuntimeError("the fused loss's gradient buffer is consumed by the first backward; "
                               "use --loss-impl reference to backpropagate twice (retain_graph)")
        ctx.used = True
        scale = torch.zeros(grad_buffer.size(0), dtype=row_scale.dtype, device=row_scale.device)
        rows, per_row = row_scale[0].long(), row_scale[1]
        scale.index_copy_(0, rows, per_row * grad_out.to(per_row.dtype))
        grad_buffer.mul_(scale.to(grad_buffer.dtype).unsqueeze(-1))
        return grad_buffer, None, None, None


def row_max(z: Tensor) -> Tuple[Tensor, Tensor]:
    """``z.max(-1, keepdim=True)`` (the values, and the first index of each row's maximum) for [n, V] rows.

    On CPU the reduction with indices is a scalar loop, ~15x slower than ``amax``; so the maximum is taken per
    block of columns with ``amax`` and the index is looked for in the first block that holds it only.
    """
    rows, vocab = z.shape
    full = vocab - vocab % ARGMAX_BLOCK
    if full < 2 * ARGMAX_BLOCK:
        return z.max(-1, keepdim=True)
    block_max = z[:, :full].view(rows, full // ARGMAX_BLOCK, ARGMAX_BLOCK).amax(-1)
    if full < vocab:
        block_max = torch.cat([block_max, z[:, full:].amax(-1, keepdim=True)], dim=-1)
    value, block = block_max.max(-1, keepdim=True)  # ties: the first block
    columns = (block * ARGMAX_BLOCK + torch.arange(ARGMAX_BLOCK, device=z.device)).clamp_(max=vocab - 1)
    # the last block may be short: its clamped columns repeat the row's last entry after its real columns,
    # so the first maximum of the window is still the first in the row
    in_block = z.gather(-1, columns).max(-1, keepdim=True).indices
    return value, columns.gather(-1, in_block)


def _support_rows(support: Optional[Tensor], start: int, end: int) -> Optional[Tensor]:
    return support if support is None or support.dim() == 1 else support[start:end]


def _total(values: Sequence[RowValue]) -> RowValue:
    """Sum of per-row quantities; Python zeros add nothing (and cost no tensor operation)."""
    total: RowValue = 0.0
    for value in values:
        if isinstance(value, Tensor) or value != 0.0:
            total = value if isinstance(total, float) and total == 0.0 else total + value
    return total


def _assemble_gradient(parts: Sequence[ClosedForm], chunk: Chunk) -> Tensor:
    """``g = sum(h) - p * sum(H)`` over the closed forms, written over a handed-over buffer or the probabilities."""
    neg_jacobian_sum = -_total([part.jacobian_sum for part in parts])
    constant = _total([part.on_support for part in parts])
    dense = [(part.dense, part.dense_scale) for part in parts if part.dense is not None]
    if dense:
        # (torch.addcmul(constant, grad, scale, out=grad) would be one pass, but broadcasting three operands
        # makes it ~4x slower on CPU than these two)
        grad, scale = dense[0]
        grad.mul_(scale)
        if isinstance(constant, Tensor) or constant != 0.0:
            grad.add_(constant)
        for other, other_scale in dense[1:]:
            grad.add_(other * other_scale)
        if isinstance(neg_jacobian_sum, Tensor):
            grad.addcmul_(chunk.probs, neg_jacobian_sum)
        else:
            grad.add_(chunk.probs, alpha=neg_jacobian_sum)
    else:  # the probabilities are not needed any more: the gradient takes their place
        grad = chunk.probs
        if isinstance(neg_jacobian_sum, Tensor) or neg_jacobian_sum != 1.0:
            grad.mul_(neg_jacobian_sum)
        if isinstance(constant, Tensor) or constant != 0.0:
            grad.add_(constant)
    if chunk.support is not None:  # nothing outside the support depends on those logits
        grad.masked_fill_(~chunk.support, 0.0)
    sparse: List[Tuple[Tensor, Tensor]] = []
    for part in parts:
        for index, h in part.at:
            for i, (seen, total) in enumerate(sparse):
                if seen is index:
                    sparse[i] = (seen, total + h)
                    break
            else:
                sparse.append((index, h))
    for index, h in sparse:
        grad.scatter_add_(-1, index, h.to(grad.dtype))
    return grad


class _PassResult:
    """Per-token results of one pass over the logits."""

    def __init__(self, n: int, num_terms: int, dtype: torch.dtype, device):
        zeros = lambda: torch.zeros(n, dtype=dtype, device=device)  # noqa: E731
        self.values = [zeros() for _ in range(num_terms)]
        self.nll, self.p_target = zeros(), zeros()
        self.hits = torch.zeros(n, dtype=torch.bool, device=device)


def _autograd_terms(logits: Tensor, idx: Tensor, target: Tensor, support: Optional[Tensor], terms: Sequence[Term],
                    dtype: torch.dtype, want_grad: bool) -> Tuple[List[Tensor], Optional[Tensor]]:
    """Values of terms without a closed form on one chunk, and the gradient of their sum (chunked autograd)."""
    with torch.enable_grad():
        z = logits.index_select(0, idx).to(dtype).requires_grad_(want_grad)
        masked = z if support is None else z.masked_fill(~support, float("-inf"))
        tokens = Tokens(torch.log_softmax(masked, dim=-1), target, support)
        values = [term.value(tokens) for term in terms]
        if not want_grad:
            return [value.detach() for value in values], None
        total = values[0]
        for value in values[1:]:
            total = total + value
        (grad,) = torch.autograd.grad(total.sum(), z)
    return [value.detach() for value in values], grad


def _one_pass(logits: Tensor, rows: Tensor, target: Tensor, terms: Sequence[Term], support: Optional[Tensor],
              grad: Optional[Tensor]) -> _PassResult:
    """Every term's per-token values and, if ``grad`` is given, the unscaled gradient rows of their sum."""
    n, vocab = rows.numel(), logits.size(-1)
    dtype = compute_dtype(logits)
    result = _PassResult(n, len(terms), dtype, logits.device)
    chunk_elements = CHUNK_ELEMENTS if logits.device.type == "cpu" else GPU_CHUNK_ELEMENTS
    step = max(1, chunk_elements // max(vocab, 1))
    needs_log_sum = any(term.needs_log_sum for term in terms)
    for start in range(0, n, step):
        end = min(start + step, n)
        idx = rows[start:end]
        sup = _support_rows(support, start, end)
        y = target[start:end].unsqueeze(-1)
        z = logits.index_select(0, idx).to(dtype)
        if sup is not None:
            z.masked_fill_(~sup, float("-inf"))
        # The softmax in place, in as few passes as possible: the row maximum (also the argmax the terms and
        # the accuracy need), z - max, its sum where asked for, exp, the normaliser s, p = exp(z - max) / s.
        # Every log-probability is then (z - max) - log s.
        top_z, top = row_max(z)
        shifted = z.sub_(top_z)
        sizes = (torch.full_like(top_z, float(vocab)) if sup is None
                 else sup.sum(-1, keepdim=True).to(dtype).expand_as(top_z))
        shifted_sum = None
        if needs_log_sum:
            shifted_sum = (shifted if sup is None else shifted.masked_fill(~sup, 0.0)).sum(-1, keepdim=True)
        shifted_y = shifted.gather(-1, y)
        normaliser = shifted.exp_().sum(-1, keepdim=True)
        log_normaliser = normaliser.log()
        probs = shifted.mul_(normaliser.reciprocal())
        lp_y = shifted_y - log_normaliser
        log_sum = None if shifted_sum is None else shifted_sum - sizes * log_normaliser
        p_y = lp_y.exp()
        chunk = Chunk(probs=probs, target=y, support=sup, support_size=sizes, lp_target=lp_y, p_target=p_y,
                      top=top, p_top=(-log_normaliser).exp(), log_sum=log_sum, needs_gradient=grad is not None)
        parts: List[ClosedForm] = []
        without: List[int] = []
        for i, term in enumerate(terms):
            part = term.closed_form(chunk)
            if part is None:
                without.append(i)
                continue
            result.values[i][start:end] = part.value.squeeze(-1)
            parts.append(part)
        result.nll[start:end], result.p_target[start:end] = -lp_y.squeeze(-1), p_y.squeeze(-1)
        result.hits[start:end] = (top == y).squeeze(-1)
        extra = None
        if without:
            values, extra = _autograd_terms(logits, idx, y.squeeze(-1), sup, [terms[i] for i in without], dtype,
                                            grad is not None)
            for i, value in zip(without, values):
                result.values[i][start:end] = value
        if grad is None:
            continue
        g = _assemble_gradient(parts, chunk) if parts else None
        if extra is not None:
            g = extra if g is None else g.add_(extra)
        grad.index_copy_(0, idx, g.to(grad.dtype))
    return result


def fused_token_losses(
    logits: Tensor,
    target: Tensor,
    terms: Sequence[Term],
    *,
    rows: Optional[Tensor] = None,
    weights: Optional[Tensor] = None,
    support: Optional[Tensor] = None,
    drop_worst_ratio: float = 0.0,
    drop_best_ratio: float = 0.0,
    rdrop_alpha: Optional[float] = None,
    reduce: bool = True,
) -> TokenLossOutput:
    """:func:`.token_loss.token_losses` on LOGITS, fused. ``rows`` picks the scored rows of ``logits`` (default:
    all), so a [B*T, V] view of the model output can be passed without copying the scored rows out."""
    terms = check_terms(terms)
    if rows is None:
        rows = torch.arange(logits.size(0), device=logits.device)
    if rdrop_alpha is not None:  # the KL needs both copies' distributions: use the reference path
        z = logits.index_select(0, rows).to(compute_dtype(logits))
        if support is not None:
            z = z.masked_fill(~support, float("-inf"))
        return token_losses(torch.log_softmax(z, -1), target, terms, weights=weights, support=support,
                            drop_worst_ratio=drop_worst_ratio, drop_best_ratio=drop_best_ratio,
                            rdrop_alpha=rdrop_alpha, reduce=reduce)
    want_grad = torch.is_grad_enabled() and logits.requires_grad
    grad = None
    if want_grad:
        covers_all = rows.numel() == logits.size(0)
        grad = torch.empty_like(logits) if covers_all else torch.zeros_like(logits)
    with torch.no_grad():
        result = _one_pass(logits.detach(), rows, target, terms, support, grad)
        w = weights.to(result.nll.dtype) if weights is not None else torch.ones_like(result.nll)
        values = [value * w for value in result.values]
        ranking = ranking_of(terms, values, drop_worst_ratio > 0.0 or drop_best_ratio > 0.0)
        kept = None if ranking is None else select_tokens(ranking, drop_worst_ratio, drop_best_ratio)
        keep = torch.ones_like(w)
        if kept is not None:
            keep = torch.zeros_like(keep).index_fill_(0, kept, 1.0)
        total = values[0]
        for value in values[1:]:
            total = total + value
        per_token = total * keep
        nll = result.nll * w * keep
    if want_grad:
        loss = _FusedTokenLoss.apply(logits, per_token, grad, torch.stack([rows.to(w.dtype), w * keep]))
    else:
        loss = per_token
    kept_mask = keep.bool()
    kept_p = result.p_target[kept_mask]
    term_sums, counts = term_statistics(terms, [value[kept_mask] for value in values], kept_p)
    return TokenLossOutput(
        loss=loss.sum() if reduce else loss,
        nll_loss=nll.sum() if reduce else nll,
        sample_size=int(kept_mask.sum().item()),
        kept=kept,
        n_correct=result.hits.sum(),
        p_target_sum=kept_p.sum(),
        term_sums=term_sums,
        counts=counts,
    )
