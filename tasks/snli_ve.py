"""Task ``snli_ve``: visual entailment (SNLI-VE), OFA's snli_ve on the fixed-candidate base.

The answer is one of OFA's candidates ``no``, ``yes``, ``maybe`` (``--ans2label-dict``); validation scores all
three for every sample and logs their accuracy as ``snli_score``, OFA's best-checkpoint metric. As OFA's,
this task has no EMA option (``--uses-ema`` is the base's and off by default).
"""
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..data.candidate_dataset import PROMPT_TYPES
from ..data.snli_ve_dataset import SNLI_VE_CANDIDATES, SnliVeDataset
from .candidate_task import CandidateTask, CandidateTaskConfig


@dataclass
class SnliVeConfig(CandidateTaskConfig):
    ans2label_dict: str = field(
        default="{" + ", ".join(f'"{answer}": {i}' for i, answer in enumerate(SNLI_VE_CANDIDATES)) + "}",
        metadata={"help": "the candidate answers, as OFA's inline JSON {answer: label} object"})
    add_caption: bool = field(default=False, metadata={
        "help": "put the caption (the text premise) in the prompt, as both of OFA's scripts do"})
    prompt_type: ChoiceEnum(list(PROMPT_TYPES)) = field(default="none", metadata={
        "help": "what the decoder reads before the answer: none ([bos]), src (the source), prev_output (the "
                "source without its eos; OFA's scripts)"})


@register_task("snli_ve", dataclass=SnliVeConfig)
class SnliVeTask(CandidateTask):
    cfg: SnliVeConfig
    METRIC, METRIC_SUM, METRIC_COUNT, METRIC_DECIMALS = "snli_score", "_snli_score_sum", "_snli_cnt", 4

    def build_dataset(self, path: str, split: str):
        return SnliVeDataset(path, split, self.codec, max_src_length=self.cfg.max_src_length,
                             add_caption=self.cfg.add_caption, prompt_type=str(self.cfg.prompt_type),
                             **self.dataset_options(split))
