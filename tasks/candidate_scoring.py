"""Inference over a fixed candidate set: all-candidate scoring, and beam search constrained by the answer trie.

All-candidate scoring ranks every candidate answer ``a`` of a sample by its log-likelihood under the model,
``sum_t log p(a_t | prompt, a_<t)`` over the answer tokens and eos, each step's distribution renormalised over
the tokens the trie allows there (OFA's ``--val-inference-type allcand``). OFA repeats the encoder output for
every (sample, candidate) pair and runs the full decoder over prompt and answer, projecting that repeated
output to attention keys and values in every layer. Here the encoder output is computed and projected to keys
and values once per batch, each sample's decoder prompt is decoded once (incrementally, its self-attention
cache kept), and each pass decodes only the answer tokens of many candidates, as rows that share their
sample's prompt cache and encoder row (see ``OFAAttention._shared_key_attention``); only the answer positions
are projected, onto the tokens the trie allows there (the constrained softmax gives every other token
probability 0).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq.data import data_utils
from fairseq.search import PrefixConstrainedBeamSearch
from torch import Tensor

from ..data.candidates import CandidateSet
from ..models.ofa.attention import IncrementalState, OFAAttention


def encode_batch(model, net_input: Dict[str, Tensor]):
    """The encoder output of an OFA batch (once per batch; every candidate pass reuses it)."""
    return model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"],
                         patch_images=net_input.get("patch_images"), patch_masks=net_input.get("patch_masks"))


def allowed_union(candidates: CandidateSet, indices: Sequence[int]) -> List[int]:
    """Every token some candidate of ``indices`` allows at some answer position (its own tokens included)."""
    union = set()
    for index in indices:
        for allowed in candidates.allowed_rows(index):
            union.update(allowed)
    return sorted(union)


def candidate_mask(candidates: CandidateSet, indices: Sequence[int], length: int, columns: Sequence[int],
                   device) -> Tensor:
    """``[len(indices), length, len(columns)]``: per candidate, which of the token ids ``columns`` it allows at
    each answer position (rows past the answer's eos allow everything; they are not scored)."""
    column_of = {token: column for column, token in enumerate(columns)}
    mask = torch.ones(len(indices), length, len(columns), dtype=torch.bool)
    for row, index in enumerate(indices):
        for position, allowed in enumerate(candidates.allowed_rows(index)):
            mask[row, position] = False
            mask[row, position, [column_of[token] for token in allowed]] = True
    return mask.to(device)


@torch.no_grad()
def score_candidates(model, net_input: Dict[str, Tensor], decoder_prompts: Sequence[Tensor],
                     candidates: CandidateSet, candidates_per_pass: int = 20, constrained: bool = True,
                     indices: Optional[Sequence[int]] = None) -> Tensor:
    """``[B, N]`` log-likelihoods of candidates ``indices`` (default: all N) for each sample of the batch.

    ``decoder_prompts[b]`` is sample ``b``'s decoder prompt, bos included (``[bos]`` with no prompt; the source
    without its eos with OFA's ``prev_output`` prompt): the decoder reads ``prompt + answer`` and the answer
    tokens and eos are scored. The prompt is decoded once per sample (samples with prompts of one length
    together); its cached self-attention keys and values then serve every candidate, so a pass decodes only
    the answer tokens. Each pass scores ``candidates_per_pass`` candidates of every sample (candidates of similar
    length together: a pass takes as many steps as its longest answer), so memory is bounded by
    ``B x candidates_per_pass`` decoder rows. When every candidate fits in one pass (SNLI-VE's three answers), one
    ordinary decoder pass over ``prompt + answer`` rows does it all: the prompt cache would save no second pass,
    and its step-by-step prompt decoding costs more small calls than that pass. ``constrained=False`` normalises
    over the whole vocabulary instead of the trie's allowed tokens. The model should be in eval mode.
    """
    if candidates_per_pass < 1:
        raise ValueError(f"candidates per pass must be positive, got {candidates_per_pass}")
    indices = list(range(len(candidates))) if indices is None else list(indices)
    encoder_out = encode_batch(model, net_input)
    device = net_input["src_tokens"].device
    prompts = [p.to(device, torch.long) for p in decoder_prompts]
    if len(indices) <= candidates_per_pass:
        features = full_pass_features(model.decoder, prompts, encoder_out, [candidates.tokens[j] for j in indices],
                                      candidates.pad)
        return answer_log_likelihoods(model.decoder.output_projection, features, candidates, indices, constrained)
    scores = torch.empty(len(prompts), len(indices), device=device)
    by_length = sorted(range(len(indices)), key=lambda k: len(candidates.tokens[indices[k]]))
    for rows in prompt_length_groups(prompts):
        group_rows = torch.tensor(rows, device=device)
        group_out = encoder_out if len(rows) == len(prompts) else model.encoder.reorder_encoder_out(
            encoder_out, group_rows)
        prompt = torch.stack([prompts[b] for b in rows])
        last_features, prompt_state = decode_prompt(model.decoder, prompt, group_out)
        for start in range(0, len(by_length), candidates_per_pass):
            columns = by_length[start:start + candidates_per_pass]
            chunk = [indices[k] for k in columns]
            features = answer_features(model.decoder, prompt, last_features, prompt_state, group_out,
                                       [candidates.tokens[j] for j in chunk], candidates.pad)
            scores[group_rows[:, None], torch.tensor(columns, device=device)] = answer_log_likelihoods(
                model.decoder.output_projection, features, candidates, chunk, constrained)
    return scores


def prompt_length_groups(prompts: Sequence[Tensor]) -> List[List[int]]:
    """The batch's sample indices grouped by prompt length (one incremental decoding serves a group)."""
    groups: Dict[int, List[int]] = {}
    for b, prompt in enumerate(prompts):
        groups.setdefault(len(prompt), []).append(b)
    return list(groups.values())


def decode_prompt(decoder, prompt: Tensor, encoder_out) -> Tuple[Tensor, IncrementalState]:
    """Decode ``prompt`` (``[B, P]``, bos first) step by step: the last position's features ``[B, C]`` (they
    predict the first answer token) and the incremental state (the prompt's self-attention keys and values,
    the encoder's cross-attention keys and values, projected once here)."""
    state: IncrementalState = {}
    for length in range(1, prompt.size(1) + 1):
        features, _ = decoder(prompt[:, :length], encoder_out=encoder_out, incremental_state=state,
                              features_only=True)
    return features[:, -1], state


def answer_features(decoder, prompt: Tensor, last_features: Tensor, prompt_state: IncrementalState,
                    encoder_out, answers: Sequence[Tensor], pad: int) -> Tensor:
    """``[B, G, L + 1, C]``: for each sample and each of the ``G`` answers (longest ``L`` tokens), the decoder
    features that predict answer token ``t`` (``t = L``: eos after the longest answer).

    The decoder rows are sample-major (row ``b * G + j``: sample ``b``, answer ``j``): each sample's prompt
    cache is repeated for its answers, while the cross-attention cache keeps one row per sample, which the
    answers share (``OFAAttention._shared_key_attention``). Answers shorter than ``L`` are padded; the
    padding is masked as a key and its positions are not scored."""
    batch, group = prompt.size(0), len(answers)
    state = dict(prompt_state)  # the encoder's keys and values stay shared, unchanged
    for module in decoder.modules():
        if isinstance(module, OFAAttention) and not module.cross_attention:
            cached = module.get_incremental_state(prompt_state, "attn_state")
            module.set_incremental_state(state, "attn_state", {
                name: value.repeat_interleave(group, dim=0) for name, value in cached.items()})
    answer_tokens = data_utils.collate_tokens(list(answers), pad, left_pad=False).to(prompt.device)
    tokens = torch.cat([prompt.repeat_interleave(group, dim=0), answer_tokens.repeat(batch, 1)], dim=1)
    steps = [last_features.repeat_interleave(group, dim=0)]
    for length in range(prompt.size(1) + 1, tokens.size(1) + 1):
        features, _ = decoder(tokens[:, :length], encoder_out=encoder_out, incremental_state=state,
                              features_only=True)
        steps.append(features[:, -1])
    return torch.stack(steps, dim=1).view(batch, group, len(steps), -1)


def full_pass_features(decoder, prompts: Sequence[Tensor], encoder_out, answers: Sequence[Tensor],
                       pad: int) -> Tensor:
    """:func:`answer_features` by one ordinary decoder pass over the rows ``prompt_b + answer_j`` (sample-major,
    right-padded; each sample's rows share its encoder row): the features at ``len(prompt_b) - 1 + t``."""
    batch, group = len(prompts), len(answers)
    tokens = data_utils.collate_tokens([torch.cat([p, a.to(p.device)]) for p in prompts for a in answers], pad,
                                       left_pad=False)
    features, _ = decoder(tokens, encoder_out=encoder_out, features_only=True)
    steps = torch.arange(max(len(a) for a in answers) + 1, device=tokens.device)
    prompt_lengths = torch.tensor([len(p) for p in prompts], device=tokens.device)
    positions = (prompt_lengths[:, None, None] - 1 + steps).expand(batch, group, len(steps))
    positions = positions.clamp(max=features.size(1) - 1).reshape(batch * group, len(steps))
    gathered = features.gather(1, positions[:, :, None].expand(-1, -1, features.size(-1)))
    return gathered.view(batch, group, len(steps), -1)


def answer_log_likelihoods(projection, features: Tensor, candidates: CandidateSet, chunk: Sequence[int],
                           constrained: bool) -> Tensor:
    """``[B, G]``: the summed log-probabilities of candidates ``chunk`` (answer tokens and eos) from their
    :func:`answer_features`; with ``constrained``, each step normalised over the tokens the trie allows there."""
    batch, group, scored_length, dim = features.shape
    device = features.device
    answers = [candidates.tokens[j] for j in chunk]
    answer_lengths = torch.tensor([len(a) + 1 for a in answers], device=device)
    steps = torch.arange(scored_length, device=device)
    targets = data_utils.collate_tokens([torch.cat([a, a.new_tensor([candidates.eos])]) for a in answers],
                                        candidates.pad, left_pad=False).to(device)
    if constrained:
        # the trie's tokens are all a constrained softmax sees: project onto those rows of the output matrix
        columns = allowed_union(candidates, chunk)
        rows = torch.tensor(columns, device=device)
        bias = projection.bias.index_select(0, rows) if projection.bias is not None else None
        logits = F.linear(features, projection.weight.index_select(0, rows), bias).float()
        logits = logits.masked_fill(~candidate_mask(candidates, chunk, scored_length, columns, device)[None],
                                    float("-inf"))
        column_of = torch.zeros(candidates.vocab_size, dtype=torch.long, device=device)
        column_of[rows] = torch.arange(len(columns), device=device)
        targets = column_of[targets]  # padding maps to column 0: masked below
    else:
        logits = projection(features).float()
    lprobs = torch.log_softmax(logits, dim=-1)
    token_scores = lprobs.gather(-1, targets[None, :, :, None].expand(batch, -1, -1, 1)).squeeze(-1)
    return token_scores.masked_fill(steps[None, None, :] >= answer_lengths[None, :, None], 0.0).sum(-1)


def best_candidates(model, net_input: Dict[str, Tensor], decoder_prompts: Sequence[Tensor],
                    candidates: CandidateSet, candidates_per_pass: int = 20, constrained: bool = True) -> List[int]:
    """Per sample, the index of its highest-scoring candidate (the first on ties, as OFA's argmax)."""
    scores = score_candidates(model, net_input, decoder_prompts, candidates, candidates_per_pass, constrained)
    return scores.argmax(dim=1).tolist()


class TriePrefixConstraint:
    """fairseq's ``prefix_allowed_tokens_fn`` for beam search over a candidate set (OFA's trie masking; used by
    :class:`TrieBeamSearch`, which renormalises over the allowed tokens as OFA does).

    The generator forces each sample's prompt (``prefix_tokens``, the decoder prompt without bos); after it,
    each step allows only what the trie allows after ``[bos] + the answer so far`` (an unknown prefix: eos).
    Call :meth:`set_prefixes` with the batch's ``prefix_tokens`` before each ``generate``.
    """

    def __init__(self, candidates: CandidateSet):
        self.candidates = candidates
        self.prefixes: List[List[int]] = []

    def set_prefixes(self, prefix_tokens: Optional[Tensor]) -> None:
        pad = self.candidates.pad
        self.prefixes = [] if prefix_tokens is None else [
            [t for t in row if t != pad] for row in prefix_tokens.tolist()]

    def prefix_length(self, batch_index: int) -> int:
        return len(self.prefixes[batch_index]) if self.prefixes else 0

    def __call__(self, batch_index: int, sent: Tensor) -> List[int]:
        prefix = self.prefixes[batch_index] if self.prefixes else []
        step = len(sent) - 1  # sent = bos + the tokens generated so far
        if step < len(prefix):
            return [prefix[step]]  # the forced prompt token
        return self.candidates.allowed_after(sent[1 + len(prefix):].tolist())


class TrieBeamSearch(PrefixConstrainedBeamSearch):
    """fairseq's prefix-constrained beam search, each step renormalised over the tokens the trie allows.

    fairseq adds ``-inf`` to the disallowed tokens' log-probabilities, so a hypothesis also pays, at every
    step, for the probability mass the model puts outside the trie; that mass is untrained (the loss and
    all-candidate scoring normalise over the allowed tokens), and it favours short answers. OFA masks the
    logits before the softmax; so does this search, by subtracting the allowed tokens' log-sum-exp (the same
    log-probabilities). Hypothesis scores then equal :func:`score_candidates`' (forced prompt tokens add 0).
    """

    def apply_mask(self, x: Tensor, prev_output_tokens: Tensor, original_batch_idxs: Tensor) -> Tensor:
        mask = super().apply_mask(x, prev_output_tokens, original_batch_idxs)
        allowed_mass = torch.logsumexp(x + mask, dim=-1, keepdim=True)
        # nothing allowed is finite (e.g. the length limit forces an eos the trie forbids): leave the row as is
        return mask - torch.where(torch.isfinite(allowed_mass), allowed_mass, torch.zeros_like(allowed_mass))
