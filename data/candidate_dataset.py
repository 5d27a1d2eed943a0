"""Samples of fixed-candidate tasks (VQA, SNLI-VE, image classification): decoder prompts and constraint masks.

OFA's ``--prompt-type`` decides what the decoder reads before the answer ``A`` (S = the source, bos and eos
included): ``none`` -> ``[bos]``; ``src`` -> ``S``; ``prev_output`` -> ``S`` without its eos. In each case the
decoder input is ``prompt + A`` and the target ``[pad] * (len(prompt) - 1) + A + [eos]``: only the answer and
eos are scored. With a candidate set, each sample carries its constraint mask (the trie's allowed tokens per
target position); the batch carries the prompts (for all-candidate scoring), ``prefix_tokens`` (the prompts
without bos, forced by beam search) and ``ref_dict`` (answer -> score, for the validation metric).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from fairseq.data import data_utils

from ..errors import OptionError
from .candidates import CandidateSet
from .ofa_dataset import BASE_BATCH_EXTRAS, OFADataset

PROMPT_TYPES = ("none", "src", "prev_output")


def check_prompt_type(prompt_type: str) -> str:
    if prompt_type not in PROMPT_TYPES:
        raise OptionError(f"--prompt-type: expected one of {', '.join(PROMPT_TYPES)}, got {prompt_type!r}")
    return prompt_type


def decoder_prompt(source: torch.LongTensor, prompt_type: str, bos: int) -> torch.LongTensor:
    """What the decoder reads before the answer, bos first (``source`` = ``[bos] + text + [eos]``)."""
    if prompt_type == "none":
        return torch.LongTensor([bos])
    if prompt_type == "src":
        return source.clone()
    if prompt_type == "prev_output":
        return source[:-1].clone()
    raise ValueError(check_prompt_type(prompt_type))


class CandidateDataset(OFADataset):
    """An :class:`OFADataset` whose targets are answers after a decoder prompt, optionally from a candidate set.

    Subclasses call :meth:`candidate_sample` from ``build_sample``. ``candidates`` None: no constraint masks
    (OFA's ``--unconstrained-training``).
    """

    #: ``decoder_prompt`` and ``constraint_mask`` differ in length per sample: :meth:`collater` lays them out.
    BATCH_EXTRAS = {**BASE_BATCH_EXTRAS, "ref_dict": "ref_dict"}
    _VARIABLE_LENGTH_KEYS = frozenset({"decoder_prompt", "constraint_mask"})

    def __init__(self, *args, candidates: Optional[CandidateSet] = None, prompt_type: str = "none", **kwargs):
        super().__init__(*args, **kwargs)
        self.candidates = candidates
        self.prompt_type = check_prompt_type(prompt_type)

    def candidate_sample(self, uniq_id: Any, image: torch.Tensor, source: torch.LongTensor,
                         answer: torch.LongTensor, ref_dict: Dict[str, float]) -> Dict[str, Any]:
        """One sample: ``prev_output = prompt + answer``, ``target = pads + answer + [eos]`` (see module doc)."""
        prompt = decoder_prompt(source, self.prompt_type, self.dictionary.bos())
        pads = torch.full((len(prompt) - 1,), self.dictionary.pad(), dtype=torch.long)
        sample = {
            "id": uniq_id,
            "source": source,
            "patch_image": image,
            "patch_mask": torch.tensor([True]),
            "target": torch.cat([pads, answer, torch.LongTensor([self.dictionary.eos()])]),
            "prev_output_tokens": torch.cat([prompt, answer]),
            "decoder_prompt": prompt,
            "ref_dict": ref_dict,
        }
        if self.candidates is not None:
            sample["constraint_mask"] = self.candidates.target_mask(len(sample["target"]), answer.tolist())
        return sample

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """OFA's batch plus ``decoder_prompts`` (a list), ``prefix_tokens`` (the prompts without bos,
        right-padded) and ``constraint_masks`` ``[B, T, V]`` (padded rows allow everything: never scored)."""
        samples = [s for s in samples if s is not None]
        masks = [s["constraint_mask"] for s in samples if "constraint_mask" in s]
        batch = super().collater([{k: v for k, v in s.items() if k not in self._VARIABLE_LENGTH_KEYS}
                                  for s in samples])
        if not batch:
            return batch
        batch["decoder_prompts"] = [s["decoder_prompt"] for s in samples]
        if masks:
            length = batch["target"].size(1)
            padded = torch.ones(len(masks), length, masks[0].size(1), dtype=torch.bool)
            for row, mask in enumerate(masks):
                padded[row, :mask.size(0)] = mask
            batch["constraint_masks"] = padded
        batch["prefix_tokens"] = data_utils.collate_tokens([p[1:] for p in batch["decoder_prompts"]],
                                                           self.dictionary.pad(), left_pad=False)
        return batch
