"""Criterion ``scst_reward_criterion``: self-critical sequence training (SCST) on CIDEr-D, OFA's caption stage 2.

Per batch, with the caption task's ``--scst`` generator (``--scst-args``, beam 5 by default):

1. the model, in eval mode and without gradients, decodes every image; every beam hypothesis is a sample
   (OFA's recipe: beam 5, all 5 beams kept);
2. each hypothesis is scored with CIDEr-D against its image's references (the sample's ``references``), using
   the fixed document-frequency table of the TRAINING references that the caption task prepares
   (``--scst-cider-cached-tokens``, else counted from the training TSVs at start-up: the criterion reads no
   file) through the plugin's one scorer (``ofa_el.data.scoring.cider``, pycocoevalcap's CiderScorer);
   as OFA's criterion does, hypotheses and references end with ``<eos>`` when the table counts that word
   (``python -m ofa_el.tools.cider_table --append-eos`` and OFA's ``coco-train-words.p`` do);
3. reward = score - mean score of the same image's OTHER hypotheses (the self-critical baseline);
4. the model, in its own mode (train mode when training), is teacher-forced on each hypothesis and the loss is
   ``sum over hypotheses of -reward * sum over its tokens of log p(token)``, normalised by fairseq with the
   number of hypothesis tokens (or hypotheses with ``--sentence-avg``), as OFA's.

``--ignore-prefix-size`` leaves the first N positions of each hypothesis out of the loss; ``--constraint-range
start,end`` restricts the softmax to the 4 special symbols and ids ``[start, end)`` (OFA's semantics for both).
"""

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.data import data_utils
from fairseq.dataclass import FairseqDataclass
from omegaconf import II
from torch import Tensor

from ..data.scoring import SCST_END_TOKEN, cider
from ..errors import OptionError
from ..losses.terms import support_mask_from_range
from .adjust_label_smoothed_cross_entropy import parse_constraint_range

logger = logging.getLogger(__name__)


@dataclass
class ScstRewardCriterionConfig(FairseqDataclass):
    ignore_prefix_size: int = field(default=0, metadata={"help": "leave the first N hypothesis positions out"})
    sentence_avg: bool = II("optimization.sentence_avg")
    constraint_range: Optional[str] = field(
        default=None, metadata={"help": "'start,end': restrict the softmax to the 4 specials and ids [start, end)"})


def self_critical_rewards(scores: Tensor, image_index: Tensor) -> Tensor:
    """Each hypothesis's score minus the mean score of the other hypotheses of its image.

    ``scores`` and ``image_index`` are [N] (hypothesis -> image). The baseline needs at least two hypotheses per
    image; the rewards of an image sum to zero.
    """
    images = int(image_index.max().item()) + 1 if image_index.numel() else 0
    totals = scores.new_zeros(images).index_add_(0, image_index, scores)
    counts = scores.new_zeros(images).index_add_(0, image_index, torch.ones_like(scores))
    if bool((counts[image_index] < 2).any()):
        raise ValueError("scst: every image needs at least 2 hypotheses for the self-critical baseline "
                         "(--scst-args beam >= 2)")
    others_mean = (totals[image_index] - scores) / (counts[image_index] - 1)
    return scores - others_mean


@register_criterion("scst_reward_criterion", dataclass=ScstRewardCriterionConfig)
class ScstRewardCriterion(FairseqCriterion):
    """OFA's ``scst_reward_criterion`` (caption stage 2) on stock fairseq; needs ``--task caption --scst``."""

    def __init__(self, task, sentence_avg: bool = False, ignore_prefix_size: int = 0,
                 constraint_range: Optional[str] = None):
        super().__init__(task)
        if not getattr(getattr(task, "cfg", None), "scst", False):
            raise OptionError("--criterion scst_reward_criterion needs --task caption with --scst (training rows then "
                              "keep all &&-joined references of their image)")
        if ignore_prefix_size < 0:
            raise OptionError(f"--ignore-prefix-size: must be >= 0, got {ignore_prefix_size}")
        self.sentence_avg = sentence_avg
        self.ignore_prefix_size = ignore_prefix_size
        dictionary = task.target_dictionary
        self.constraint_range = parse_constraint_range(constraint_range, len(dictionary))
        self.document_frequency = task.scst_document_frequency()
        self.append_eos = (SCST_END_TOKEN,) in self.document_frequency[0]
        if not self.append_eos:
            logger.warning("SCST: the CIDEr table counts no %r: scoring hypotheses and references without it "
                           "(OFA's tables are built with it: cider_table --append-eos)", SCST_END_TOKEN)

    # ------------------------------------------------------------------ the steps
    def generate(self, model, sample) -> Tuple[List[Tensor], Tensor]:
        """Every beam hypothesis (token ids, eos kept) and the index of its image; eval mode, no gradients."""
        generator = getattr(self.task, "scst_generator", None)
        if generator is None:
            raise ValueError("scst_reward_criterion: the task built no SCST generator (--scst, then build_model)")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outputs = self.task.inference_step(generator, [model], sample)
        finally:
            model.train(was_training)
        hypotheses = [hypothesis["tokens"] for beams in outputs for hypothesis in beams]
        image_index = torch.tensor([i for i, beams in enumerate(outputs) for _ in beams], dtype=torch.long)
        return hypotheses, image_index

    def score(self, captions: Sequence[str], image_index: Sequence[int], references: Sequence[Sequence[str]]
              ) -> Tensor:
        """CIDEr-D of each caption against its image's references with the training table ([N], float64)."""
        def wrap(text: str) -> str:
            return f"{text.strip()} {SCST_END_TOKEN}" if self.append_eos else text.strip()

        # the hypothesis's position is its record id: two equal captions of one image are two samples
        records = [(n, wrap(caption), [wrap(ref) for ref in references[i]])
                   for n, (caption, i) in enumerate(zip(captions, image_index))]
        _, scores = cider(records, document_frequency=self.document_frequency)
        return torch.tensor([scores[n] for n in range(len(records))], dtype=torch.float64)

    def hypothesis_log_probs(self, model, sample, hypotheses: List[Tensor], image_index: Tensor
                             ) -> Tuple[Tensor, Tensor]:
        """Teacher-forced ``log p`` of each hypothesis token ([N, T], 0 where not scored) and the scored mask."""
        device = sample["target"].device
        pad, bos = self.padding_idx, self.task.target_dictionary.bos()
        target = data_utils.collate_tokens(hypotheses, pad, left_pad=False).to(device)
        prev_output_tokens = data_utils.collate_tokens(
            [torch.cat([hypothesis.new_tensor([bos]), hypothesis[:-1]]) for hypothesis in hypotheses], pad,
            left_pad=False).to(device)
        image_index = image_index.to(device)
        images = sample["target"].size(0)
        net_input = {key: value.index_select(0, image_index)
                     if torch.is_tensor(value) and value.dim() > 0 and value.size(0) == images else value
                     for key, value in sample["net_input"].items()}
        net_input["prev_output_tokens"] = prev_output_tokens
        logits = model(**net_input)[0]
        if self.constraint_range is not None:
            allowed = support_mask_from_range(logits.size(-1), *self.constraint_range, device=logits.device)
            logits = logits.masked_fill(~allowed, float("-inf"))
        scored = target.ne(pad)
        if self.ignore_prefix_size > 0:
            scored[:, :self.ignore_prefix_size] = False
        token_nll = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=pad, reduction="none")
        return -token_nll.masked_fill(~scored, 0.0), scored

    # ------------------------------------------------------------------ forward
    def forward(self, model, sample, update_num: Optional[int] = None, reduce: bool = True):
        """(loss, sample_size, logging_output); ``update_num`` is accepted for the plugin's tasks and unused."""
        if "references" not in sample:
            raise ValueError("scst_reward_criterion: the batch has no 'references' (train the caption task with "
                             "--scst)")
        hypotheses, image_index = self.generate(model, sample)
        captions = [self.task.caption_text(tokens) for tokens in hypotheses]
        scores = self.score(captions, image_index.tolist(), sample["references"])
        rewards = self_critical_rewards(scores, image_index)
        log_probs, scored = self.hypothesis_log_probs(model, sample, hypotheses, image_index)
        weights = rewards.to(log_probs.device, log_probs.dtype)
        per_hypothesis = -(weights[:, None] * log_probs)
        loss = per_hypothesis.sum() if reduce else per_hypothesis
        ntokens = int(scored.sum().item())
        nsentences = len(hypotheses)
        sample_size = nsentences if self.sentence_avg else ntokens
        first_beam = torch.ones_like(image_index, dtype=torch.bool)
        first_beam[1:] = image_index[1:] != image_index[:-1]
        logging_output = {
            "loss": loss.data.sum(),
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": sample_size,
            "score_sum": float(scores.sum()),
            "top_score_sum": float(scores[first_beam].sum()),
            "images": int(first_beam.sum()),
            "reward_abs_sum": float(rewards.abs().sum()),
        }
        return loss, sample_size, logging_output

    # ------------------------------------------------------------------ metrics
    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """``loss`` per token (the reward-weighted NLL in nats, OFA's scale); ``score``: mean CIDEr-D of all
        hypotheses (OFA's metric); ``top_score``: of each image's best beam (what validation decodes);
        ``reward_abs``: mean |reward| (the mean reward is 0 by construction: an image's rewards sum to 0)."""
        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size, hypotheses, images = total("sample_size"), total("nsentences"), total("images")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1), sample_size, round=4)
        if hypotheses > 0:
            metrics.log_scalar("score", total("score_sum") / hypotheses, hypotheses, round=3)
            metrics.log_scalar("reward_abs", total("reward_abs_sum") / hypotheses, hypotheses, round=4)
        if images > 0:
            metrics.log_scalar("top_score", total("top_score_sum") / images, images, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
