"""Inference over a fixed candidate set: all-candidate scoring, and beam search constrained by the answer trie.

All-candidate scoring ranks every candidate answer ``a`` of a sample by its log-likelihood under the model,
``sum_t log p(a_t | prompt, a_<t)`` over the answer tokens and eos, each step's distribution renormalised over
the tokens the trie allows there (OFA's ``--val-inference-type allcand``). OFA repeats the encoder output for
every (sample, candidate) pair and runs the full decoder, projecting that repeated output to attention keys and
values in every layer; here the encoder output is computed and projected once per sample: a decoder pass
holds the sample's candidates as rows that share the sample's encoder row (see
``OFAAttention._shared_key_attention``), and only the answer positions are projected, onto the tokens the trie
allows there (the constrained softmax gives every other token probability 0).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from fairseq.data import data_utils
from torch import Tensor

from ..data.candidates import CandidateSet


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
    tokens and eos are scored. Each pass scores ``candidates_per_pass`` candidates of every sample, so memory
    is bounded by ``B x candidates_per_pass`` decoder rows. ``constrained=False`` normalises over the whole
    vocabulary instead of the trie's allowed tokens. The model should be in eval mode.
    """
    if candidates_per_pass < 1:
        raise ValueError(f"candidates per pass must be positive, got {candidates_per_pass}")
    indices = list(range(len(candidates))) if indices is None else list(indices)
    encoder_out = encode_batch(model, net_input)
    device = net_input["src_tokens"].device
    pad, eos = candidates.pad, candidates.eos
    prompts = [p.to("cpu", torch.long) for p in decoder_prompts]
    batch = len(prompts)
    prompt_lengths = torch.tensor([len(p) for p in prompts], device=device)
    chunks = []
    for start in range(0, len(indices), candidates_per_pass):
        chunk = indices[start:start + candidates_per_pass]
        answers = [candidates.tokens[j] for j in chunk]
        # decoder input (b, j) = prompt_b + answer_j, sample-major: sample b's rows share encoder row b
        prev_output = data_utils.collate_tokens([torch.cat([p, a]) for p in prompts for a in answers], pad,
                                                left_pad=False).to(device)
        features, _ = model.decoder(prev_output, encoder_out=encoder_out, features_only=True)
        scored_length = max(len(a) for a in answers) + 1  # answer + eos
        answer_lengths = torch.tensor([len(a) + 1 for a in answers], device=device)
        steps = torch.arange(scored_length, device=device)
        # features at position prompt_len - 1 + t predict answer token t (eos after the answer)
        positions = (prompt_lengths[:, None, None] - 1 + steps).expand(batch, len(chunk), scored_length)
        positions = positions.clamp(max=features.size(1) - 1).reshape(batch * len(chunk), scored_length)
        gathered = features.gather(1, positions[:, :, None].expand(-1, -1, features.size(-1)))
        targets = data_utils.collate_tokens([torch.cat([a, a.new_tensor([eos])]) for a in answers], pad,
                                            left_pad=False).to(device)
        projection = model.decoder.output_projection
        if constrained:
            # the trie's tokens are all a constrained softmax sees: project onto those rows of the output matrix
            columns = allowed_union(candidates, chunk)
            rows = torch.tensor(columns, device=device)
            bias = projection.bias.index_select(0, rows) if projection.bias is not None else None
            logits = F.linear(gathered, projection.weight.index_select(0, rows), bias).float()
            logits = logits.view(batch, len(chunk), scored_length, -1).masked_fill(
                ~candidate_mask(candidates, chunk, scored_length, columns, device)[None], float("-inf"))
            column_of = torch.full((candidates.vocab_size,), 0, dtype=torch.long, device=device)
            column_of[rows] = torch.arange(len(columns), device=device)
            targets = column_of[targets]  # padding maps to column 0: masked below
        else:
            logits = projection(gathered).float().view(batch, len(chunk), scored_length, -1)
        lprobs = torch.log_softmax(logits, dim=-1)
        token_scores = lprobs.gather(-1, targets[None, :, :, None].expand(batch, -1, -1, 1)).squeeze(-1)
        token_scores = token_scores.masked_fill(steps[None, None, :] >= answer_lengths[None, :, None], 0.0)
        chunks.append(token_scores.sum(-1))
    return torch.cat(chunks, dim=1)


def best_candidates(model, net_input: Dict[str, Tensor], decoder_prompts: Sequence[Tensor],
                    candidates: CandidateSet, candidates_per_pass: int = 20, constrained: bool = True) -> List[int]:
    """Per sample, the index of its highest-scoring candidate (the first on ties, as OFA's argmax)."""
    scores = score_candidates(model, net_input, decoder_prompts, candidates, candidates_per_pass, constrained)
    return scores.argmax(dim=1).tolist()


class TriePrefixConstraint:
    """fairseq's ``prefix_allowed_tokens_fn`` for beam search over a candidate set (OFA's trie masking).

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
