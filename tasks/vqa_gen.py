"""Task ``vqa_gen``: OFA's VQA finetuning (answers generated over a fixed candidate set), validated by VQA score.

OFA's flags carry over: ``--ans2label-file`` (OFA's ``trainval_ans2label.pkl``, or a text / JSON answer list),
``--prompt-type`` (the published recipes: ``prev_output``), ``--add-object`` / ``--max-object-length``,
``--unconstrained-training`` (no candidate set: free-vocabulary loss, beam-search validation),
``--val-inference-type allcand|beamsearch``, ``--valid-batch-size``, ``--uses-ema``. The logged metric is
``vqa_score``: the mean over questions of the predicted answer's confidence in the row's answers.
"""
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..data.candidate_dataset import PROMPT_TYPES
from ..data.vqa_dataset import VqaDataset
from .candidate_task import CandidateTask, CandidateTaskConfig

#: OFA's ``vqa_gen`` validation decoding (its ``--eval-args`` default).
VQA_EVAL_ARGS = '{"beam":5,"unnormalized":true,"temperature":1.0}'


@dataclass
class VqaGenConfig(CandidateTaskConfig):
    max_object_length: int = field(default=30, metadata={"help": "object tags read with --add-object"})
    add_object: bool = field(default=False, metadata={"help": "append ' object: <tags>' to the question"})
    unconstrained_training: bool = field(default=False, metadata={
        "help": "no candidate set: the loss covers the whole vocabulary and validation must use beamsearch"})
    prompt_type: ChoiceEnum(list(PROMPT_TYPES)) = field(default="none", metadata={
        "help": "what the decoder reads before the answer: none ([bos]), src (the source), prev_output (the "
                "source without its eos; OFA's VQA recipes)"})
    eval_args: str = field(default=VQA_EVAL_ARGS, metadata={
        "help": "generation options of beamsearch validation, as JSON"})


@register_task("vqa_gen", dataclass=VqaGenConfig)
class VqaGenTask(CandidateTask):
    cfg: VqaGenConfig
    METRIC, METRIC_SUM, METRIC_COUNT, METRIC_DECIMALS = "vqa_score", "_vqa_score_sum", "_vqa_cnt", 4

    @property
    def constrained(self) -> bool:
        return not self.cfg.unconstrained_training

    def build_dataset(self, path: str, split: str):
        options = self.dataset_options(split)
        return VqaDataset(path, split, self.codec, max_src_length=self.cfg.max_src_length,
                          max_object_length=self.cfg.max_object_length, max_tgt_length=self.cfg.max_tgt_length,
                          add_object=self.cfg.add_object, prompt_type=str(self.cfg.prompt_type), **options)
