"""The task base of OFA's fixed-candidate tasks (``vqa_gen``; also fits ``snli_ve`` and ``image_classify``).

It reads the candidate answers (``--ans2label-file`` or the inline ``--ans2label-dict``), builds their trie
and masks (:class:`~ofa_el.data.candidates.CandidateSet`), and validates by predicting an answer per sample
(``--val-inference-type allcand``: every candidate scored, :mod:`.candidate_scoring`; ``beamsearch``: beam
search constrained by the trie) and averaging ``ref_dict[prediction]`` (0 for an answer the row does not
list) into the task's metric. With ``--uses-ema`` (and fairseq's ``--store-ema``) the predictions come from
the EMA model, as OFA's, while the validation loss stays the training model's.
"""

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional

import torch
from fairseq import metrics
from fairseq.dataclass import ChoiceEnum

from ..data.candidates import CandidateSet, load_answer_list, parse_answer_dict
from ..errors import OptionError
from .candidate_scoring import TrieBeamSearch, TriePrefixConstraint, best_candidates
from .ofa_task import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)

INFERENCE_TYPES = ("allcand", "beamsearch")


@dataclass
class CandidateTaskConfig(OFATaskConfig):
    ans2label_file: Optional[str] = field(default=None, metadata={
        "help": "the candidate answers: OFA's pickled {answer: label} dict (.pkl), a JSON list or dict (.json), "
                "or text with one answer per line; candidate i is the i-th answer"})
    ans2label_dict: str = field(default='{"no": 0, "yes": 1}', metadata={
        "help": "the candidate answers as an inline JSON {answer: label} object, without --ans2label-file"})
    valid_batch_size: int = field(default=20, metadata={
        "help": "all-candidate validation scores this many candidates of every sample per decoder pass"})
    val_inference_type: ChoiceEnum(list(INFERENCE_TYPES)) = field(default="allcand", metadata={
        "help": "validation answers: allcand (every candidate scored) or beamsearch (--eval-args, trie-constrained)"})
    uses_ema: bool = field(default=False, metadata={
        "help": "validation answers from the EMA model (needs fairseq's --store-ema), as OFA's --uses-ema"})


class CandidateTask(OFATask):
    """A task whose answers come from a fixed candidate set; subclasses build the dataset and name the metric."""

    cfg: CandidateTaskConfig
    #: The logged validation metric (best-checkpoint metric), its summed keys and its rounding.
    METRIC: ClassVar[str] = "score"
    METRIC_SUM: ClassVar[str] = "_score_sum"
    METRIC_COUNT: ClassVar[str] = "_score_cnt"
    METRIC_DECIMALS: ClassVar[int] = 4

    def __init__(self, cfg: CandidateTaskConfig, codec):
        super().__init__(cfg, codec)
        if str(cfg.val_inference_type) not in INFERENCE_TYPES:
            raise OptionError(f"--val-inference-type: expected allcand or beamsearch, got {cfg.val_inference_type!r}")
        if cfg.valid_batch_size < 1:
            raise OptionError(f"--valid-batch-size: must be positive, got {cfg.valid_batch_size}")
        self.uses_ema = cfg.uses_ema
        self.candidates: Optional[CandidateSet] = None
        if self.constrained:
            self.candidates = CandidateSet(self.answer_list(), codec, source=cfg.ans2label_file or "--ans2label-dict")
            logger.info("%d candidate answers", len(self.candidates))
        elif str(cfg.val_inference_type) == "allcand":
            raise OptionError("--val-inference-type allcand needs a candidate set: use beamsearch without one")
        self.trie_constraint = TriePrefixConstraint(self.candidates) if self.candidates is not None else None

    @property
    def constrained(self) -> bool:
        """Whether the task has a candidate set (a subclass may train without one)."""
        return True

    def answer_list(self) -> List[str]:
        if self.cfg.ans2label_file:
            return load_answer_list(self.cfg.ans2label_file)
        return parse_answer_dict(self.cfg.ans2label_dict)

    def dataset_options(self, split: str):
        return dict(super().dataset_options(split), candidates=self.candidates)

    # ------------------------------------------------------------------ inference
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if str(self.cfg.val_inference_type) == "beamsearch":
            self.generator = self.answer_generator(model)
        return model

    def answer_generator(self, model, generation_args=None):
        """A beam search (``--eval-args`` unless given) that forces each sample's prompt and then, with a
        candidate set, follows the trie."""
        args = generation_args if generation_args is not None else self.generation_args()
        generator = self.build_generator([model], args, prefix_allowed_tokens_fn=self.trie_constraint)
        if self.trie_constraint is not None:  # renormalised over the trie's tokens, as OFA's generator
            generator.search = TrieBeamSearch(self.target_dictionary, self.trie_constraint)
        return generator

    def predict_answers(self, model, sample, inference_type: Optional[str] = None, generator=None) -> List[str]:
        """One answer string per sample of the batch, by all-candidate scoring or constrained beam search."""
        inference_type = str(inference_type or self.cfg.val_inference_type)
        if inference_type == "allcand":
            if self.candidates is None:
                raise OptionError("all-candidate inference needs a candidate set (--ans2label-file)")
            best = best_candidates(model, sample["net_input"], sample["decoder_prompts"], self.candidates,
                                   self.cfg.valid_batch_size)
            return [self.candidates.answers[i] for i in best]
        generator = generator if generator is not None else self.generator
        if self.trie_constraint is not None:
            self.trie_constraint.set_prefixes(sample["prefix_tokens"])
        outputs = self.inference_step(generator, [model], sample, prefix_tokens=sample["prefix_tokens"])
        answers = []
        pad = self.dictionary.pad()
        for row, output in enumerate(outputs):
            prompt_length = int(sample["prefix_tokens"][row].ne(pad).sum())
            answers.append(self.codec.decode(output[0]["tokens"][prompt_length:]).strip())
        return answers

    @staticmethod
    def answer_scores(answers: List[str], ref_dicts: List[Dict[str, float]]) -> List[float]:
        """Each prediction's score: its value in the row's ``ref_dict`` (OFA's per-sample score), else 0."""
        return [float(ref.get(answer, 0.0)) for answer, ref in zip(answers, ref_dicts)]

    # ------------------------------------------------------------------ steps
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **extra_kwargs):
        """fairseq passes ``ema_model=`` with ``--store-ema`` and ``uses_ema``; training does not use it."""
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion, **extra_kwargs):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if not sample:
            return loss, sample_size, logging_output
        eval_model = model
        if self.uses_ema:
            eval_model = extra_kwargs.get("ema_model")
            if eval_model is None:
                raise OptionError("--uses-ema: fairseq passed no EMA model to validation; add --store-ema")
        was_training = eval_model.training
        eval_model.eval()
        with torch.no_grad():
            answers = self.predict_answers(eval_model, sample)
        eval_model.train(was_training)
        scores = self.answer_scores(answers, sample["ref_dict"])
        logging_output[self.METRIC_SUM] = sum(scores)
        logging_output[self.METRIC_COUNT] = len(scores)
        self.maybe_print_sample(sample, answers[0], sample["ref_dict"][0])
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        count = self.sum_logging_outputs(logging_outputs, self.METRIC_COUNT)
        if count > 0:
            total, counted, decimals = self.METRIC_SUM, self.METRIC_COUNT, self.METRIC_DECIMALS
            metrics.log_scalar(total, self.sum_logging_outputs(logging_outputs, total))
            metrics.log_scalar(counted, count)
            metrics.log_derived(self.METRIC, lambda m: round(m[total].sum / m[counted].sum, decimals))
