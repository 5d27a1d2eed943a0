"""Task ``caption``: OFA's COCO caption finetuning with CIDEr validation.

Validation generates a caption per image with fairseq's SequenceGenerator (options from
``--eval-args``) and scores it with pycocoevalcap's CIDEr-D against the image's references.
Document frequencies come from ``--eval-cider-cached-tokens`` (OFA's pickle of the COCO
validation references) or, without it, from all references of the validation file; with a
fixed table, per-image scores add up, so the corpus score is exact however the validation
set is split across workers.

``--scst`` prepares caption stage 2 (self-critical training, ``--criterion scst_reward_criterion``):
training rows are read like evaluation rows (one row per image, all its references ``&&``-joined,
kept as ``references``), a second generator decodes the training samples (``--scst-args``), and the
task holds the CIDEr table of the training references the criterion scores with
(``--scst-cider-cached-tokens``, else counted from the training TSVs): as fairseq's criteria, the SCST
criterion reads only the model, the sample and what the task prepared, never a file.
"""
import logging
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from fairseq import metrics
from fairseq.tasks import register_task

from ..data.caption_dataset import CaptionDataset
from ..data.caption_references import read_references
from ..data.scoring import SCST_END_TOKEN, cider, document_frequency_of, load_cider_document_frequency
from ..data.text import strip_punctuation
from ..errors import OptionError
from .ofa_task import OFATask, OFATaskConfig, json_generation_args

logger = logging.getLogger(__name__)

#: OFA's stage-2 decoding of the training samples (run_scripts/caption/train_caption_stage2.sh passes this).
DEFAULT_SCST_ARGS = '{"beam":5,"max_len_b":16}'
#: A CIDEr document-frequency table: ``({n-gram: number of images}, number of images)``.
CiderTable = Tuple[Dict[tuple, float], float]


@dataclass
class CaptionConfig(OFATaskConfig):
    eval_cider: bool = field(default=False, metadata={"help": "score validation captions with CIDEr"})
    eval_cider_cached_tokens: Optional[str] = field(
        default=None, metadata={"help": "OFA's CIDEr document-frequency pickle (e.g. coco-valid-words.p)"})
    scst: bool = field(default=False, metadata={
        "help": "self-critical sequence training (caption stage 2, --criterion scst_reward_criterion): training "
                "rows hold all &&-joined references of one image"})
    scst_args: str = field(default=DEFAULT_SCST_ARGS, metadata={
        "help": "generation options for the SCST samples, as JSON; every beam hypothesis is a sample"})
    scst_cider_cached_tokens: Optional[str] = field(
        default=None, metadata={"help": "CIDEr document-frequency pickle of the TRAINING references (OFA's "
                                        "coco-train-words.p); default: counted from the training TSVs at start-up"})


@register_task("caption", dataclass=CaptionConfig)
class CaptionTask(OFATask):
    cfg: CaptionConfig
    _cider_table = None
    _scst_cider_table = None

    def build_dataset(self, path: str, split: str):
        options = self.dataset_options(split)
        # SCST scores each training image's hypotheses against all its references: rows as evaluation rows
        references = True if split == "train" and self.cfg.scst else None
        return CaptionDataset(path, split, self.codec, max_tgt_length=self.cfg.max_tgt_length, references=references,
                              **options)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.scst:
            self.scst_generator = self.build_generator([model], self.scst_generation_args())
        if self.cfg.eval_cider:
            self.generator = self.build_generator([model], self.generation_args())
        return model

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        """Training loads its validation split at start: read the CIDEr table then, so that a wrong
        ``--eval-cider-cached-tokens`` stops the run before the first update, not at the first validation."""
        super().load_dataset(split, epoch, combine, **kwargs)
        if split == "valid" and self.cfg.eval_cider:
            self.cider_document_frequency()

    def cider_document_frequency(self):
        """The table validation scores with, read once when validation first needs it. Building the task (for
        evaluation or prediction from a checkpoint whose stored table path does not exist here) never reads it."""
        if self._cider_table is None:
            if self.cfg.eval_cider_cached_tokens:
                self._cider_table = load_cider_document_frequency(self.cfg.eval_cider_cached_tokens)
            else:
                self._cider_table = self.validation_document_frequency()
        return self._cider_table

    def validation_document_frequency(self) -> CiderTable:
        """CIDEr's document frequencies over every reference of the whole validation file."""
        path = self.split_path("valid")
        table = document_frequency_of(references for _, references in self.references_of([path]))
        logger.info("CIDEr document frequencies from the %d images of %s", int(table[1]), path)
        return table

    def scst_document_frequency(self) -> CiderTable:
        """The table SCST scores with, read or counted once: ``--scst-cider-cached-tokens``, else every training
        image's references, each ended with ``<eos>`` as OFA's training table is."""
        if self._scst_cider_table is None:
            path = self.cfg.scst_cider_cached_tokens
            if path:
                self._scst_cider_table = load_cider_document_frequency(path, option="--scst-cider-cached-tokens")
                logger.info("SCST CIDEr document frequencies: %s (%d images)", path, int(self._scst_cider_table[1]))
            else:
                self._scst_cider_table = document_frequency_of(
                    [f"{ref} {SCST_END_TOKEN}" for ref in refs] for refs in self.training_references())
                logger.info("SCST CIDEr document frequencies counted from the %d training images of %s (no "
                            "--scst-cider-cached-tokens; python -m ofa_el.tools.cider_table --append-eos writes one)",
                            int(self._scst_cider_table[1]), ",".join(self.training_paths()))
        return self._scst_cider_table

    def scst_generation_args(self) -> Namespace:
        """``--scst-args`` checked: its beam (fairseq's default 5) must leave each image 2+ samples."""
        options = json_generation_args("--scst-args", self.cfg.scst_args)
        beam = getattr(options, "beam", 5)
        if not isinstance(beam, int) or beam < 2:
            raise OptionError(f"--scst-args: beam must be an integer >= 2 (each image's other beams are the "
                              f"self-critical baseline), got {beam!r}")
        return options

    def training_paths(self) -> List[str]:
        """Every training TSV (all of ``data`` but the last, evaluation, file)."""
        self.split_path("train")  # checks there is a training file
        return self.data_paths()[:-1]

    def training_references(self) -> Iterator[List[str]]:
        """The cleaned references of every training row (one image each in a stage-2 file), file by file."""
        for _, references in self.references_of(self.training_paths()):
            yield references

    def references_of(self, paths: List[str]) -> Iterator[Tuple[None, List[str]]]:
        """Every row's references from the caption column the datasets read, skipping the rows they skip."""
        caption_column = CaptionDataset.field_columns(self.cfg.selected_cols)["caption"]
        return read_references(paths, caption_column, skip_invalid_rows=self.cfg.skip_invalid_rows)

    def caption_text(self, tokens) -> str:
        """Decoded, punctuation-free caption text, as OFA scores it."""
        return strip_punctuation(self.codec.decode(tokens)).strip()

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.cfg.eval_cider and sample:
            captions = [self.caption_text(tokens) for tokens in self.hypotheses(self.generator, model, sample)]
            records = list(zip(sample["id"].tolist(), captions, sample["references"]))
            _, scores = cider(records, document_frequency=self.cider_document_frequency())
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
