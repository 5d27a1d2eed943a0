"""Task ``caption``: OFA's COCO caption finetuning with CIDEr validation.

Validation generates a caption per image with fairseq's SequenceGenerator (options from
``--eval-args``) and scores it with pycocoevalcap's CIDEr-D against the image's references.
Document frequencies come from ``--eval-cider-cached-tokens`` (OFA's pickle of the COCO
validation references) or, without it, from all references of the validation file; with a
fixed table, per-image scores add up, so the corpus score is exact however the validation
set is split across workers.
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

from fairseq import metrics
from fairseq.tasks import register_task

from ..data.caption_dataset import CaptionDataset
from ..data.scoring import cider, document_frequency_of, load_cider_document_frequency
from ..data.text import clean_references, strip_punctuation
from ..data.tsv import TsvFile
from .ofa_task import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)


@dataclass
class CaptionConfig(OFATaskConfig):
    eval_cider: bool = field(default=False, metadata={"help": "score validation captions with CIDEr"})
    eval_cider_cached_tokens: Optional[str] = field(
        default=None, metadata={"help": "OFA's CIDEr document-frequency pickle (e.g. coco-valid-words.p)"})


@register_task("caption", dataclass=CaptionConfig)
class CaptionTask(OFATask):
    cfg: CaptionConfig

    def build_dataset(self, path: str, split: str):
        options = self.dataset_options(split)
        options["selected_cols"] = options["selected_cols"] or "0,4,2"
        return CaptionDataset(path, split, self.codec, max_tgt_length=self.cfg.max_tgt_length, **options)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.eval_cider:
            self.generator = self.build_generator([model], self.generation_args())
            if self.cfg.eval_cider_cached_tokens:
                self.cider_table = load_cider_document_frequency(self.cfg.eval_cider_cached_tokens)
            else:
                self.cider_table = self.validation_document_frequency()
        return model

    def validation_document_frequency(self):
        """CIDEr's document frequencies over every reference of the whole validation file."""
        path = self.split_path("valid")
        columns = (self.cfg.selected_cols or "0,4,2").split(",")
        rows = TsvFile(path, columns[2], slice_id=0, slice_count=1)
        table = document_frequency_of(clean_references(rows[i][0]) for i in range(len(rows)))
        logger.info("CIDEr document frequencies from the %d images of %s", int(table[1]), path)
        return table

    def caption_text(self, tokens) -> str:
        """Decoded, punctuation-free caption text, as OFA scores it."""
        return strip_punctuation(self.codec.decode(tokens)).strip()

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.cfg.eval_cider and sample:
            captions = [self.caption_text(tokens) for tokens in self.hypotheses(self.generator, model, sample)]
            records = list(zip(sample["id"].tolist(), captions, sample["references"]))
            _, scores = cider(records, document_frequency=self.cider_table)
            logging_output["_cider_score_sum"] = float(sum(scores.values()))
            logging_output["_cider_cnt"] = len(scores)
            self.maybe_print_sample(sample, captions[0], sample["references"][0])
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        count = self.sum_logging_outputs(logging_outputs, "_cider_cnt")
        if count > 0:
            metrics.log_scalar("_cider_score_sum", self.sum_logging_outputs(logging_outputs, "_cider_score_sum"))
            metrics.log_scalar("_cider_cnt", count)
            metrics.log_derived("cider", lambda meters: round(
                meters["_cider_score_sum"].sum / meters["_cider_cnt"].sum, 3))
            # how many images were scored, over all workers: the whole validation set, each once
            metrics.log_derived("scored", lambda meters: int(meters["_cider_cnt"].sum))
