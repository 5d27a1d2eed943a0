"""Inference over a fixed candidate set: all-candidate scoring, and beam search constrained by the answer trie.

All-candidate scoring ranks every candidate answer ``a`` of a sample by its log-likelihood under the model,
``sum_t log p(a_t | prompt, a_<t)`` over the answer tokens and eos, each step's distribution renormalised over
the tokens the trie allows there (OFA's ``--val-inference-type allcand``). OFA repeats the encoder output for
every (sample, candidate) pair and runs the full decoder, projecting that repeated output to attention keys and
values in every layer; here the encoder output is computed and projected once per sample: a decoder pass
holds the sample's candidates as rows that share the sample's encoder row (see
``OFAAttention._shared_key_attention``), and only the answer positions are projected to the vocabulary.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from fairseq.data import data_utils
from torch import Tensor

from ..data.candidates import CandidateSet


def encode_batch(model, net_input: Dict[str, Tensor]):
    """The encoder output of an OFA batch (once per batch; every candidate pass reuses it)."""
    return model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"],
                         patch_images=net_input.get("patch_images"), patch_masks=net_input.get("patch_masks"))


def candidate_mask(candidates: CandidateSet, indices: Sequence[int], length: int, device) -> Tensor:
    """``[len(indices), length, V]``: per candidate, its allowed tokens at each answer position (rows past the
    answer's eos allow everything; they are not scored)."""
    mask = torch.ones(len(indices), length, candidates.vocab_size, dtype=torch.bool)
    for row, index in enumerate(indices):
        for position, allowed in enumerate(candidates.allowed_rows(index)):
            mask[row, position] = False
            mask[row, position, allowed] = True
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
        logits = model.decoder.output_projection(gathered).float().view(batch, len(chunk), scored_length, -1)
        if constrained:
            logits = logits.masked_fill(~candidate_mask(candidates, chunk, scored_length, device)[None],
                                        float("-inf"))
        lprobs = torch.log_softmax(logits, dim=-1)
        targets = data_utils.collate_tokens([torch.cat([a, a.new_tensor([eos])]) for a in answers], pad,
                                            left_pad=False).to(device)
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
