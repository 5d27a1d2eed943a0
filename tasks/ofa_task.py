"""The task base shared by ``caption`` and ``refcoco``: OFA's data options, dictionary and batching.

OFA's ``data`` is a comma-separated list of TSV files: the last one serves every evaluation
split, the others are the training files, rotated per epoch. Unlike OFA, training rows are
shuffled each epoch from ``--seed`` (``--keep-row-order`` restores OFA's file order), and
invalid rows can be skipped and counted (``--skip-invalid-rows``).
"""
import functools
import inspect
import json
import logging
import os
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from fairseq import utils
from fairseq.data import FairseqDataset, iterators
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask
from omegaconf import II

from ..data.dictionary import build_ofa_dictionary
from ..data.text import TextCodec
from ..errors import MissingFileError, OptionError
from .ngram_blocking import fix_ngram_blocking

logger = logging.getLogger(__name__)


class RowOrderBatchIterator(iterators.EpochBatchIterator):
    """Batches in the dataset's order: rows are already shuffled per epoch (or kept in file order with
    --keep-row-order), so a second, batch-level shuffle would only make runs with different worker
    counts or --update-freq see different micro-batches."""

    def next_epoch_itr(self, shuffle=True, fix_batches_to_gpus=False, set_dataset_epoch=True):
        return super().next_epoch_itr(False, fix_batches_to_gpus, set_dataset_epoch)


@dataclass
class OFATaskConfig(FairseqDataclass):
    data: Optional[str] = field(
        default=None, metadata={"help": "comma-separated TSV files: the training file(s), then the evaluation file"})
    selected_cols: Optional[str] = field(default=None, metadata={"help": "columns to read, in this order"})
    bpe_dir: Optional[str] = field(default=None, metadata={"help": "directory with encoder.json, vocab.bpe, dict.txt"})
    max_source_positions: int = field(default=1024, metadata={"help": "max tokens in the source sequence"})
    max_target_positions: int = field(default=1024, metadata={"help": "max tokens in the target sequence"})
    max_src_length: int = field(default=128, metadata={"help": "max words of the source text"})
    max_tgt_length: int = field(default=30, metadata={"help": "max words of the target text"})
    code_dict_size: int = field(default=8192, metadata={"help": "number of <code_i> image-code tokens"})
    patch_image_size: int = field(default=480, metadata={"help": "side of the square model input image"})
    num_bins: int = field(default=1000, metadata={"help": "number of <bin_i> location tokens"})
    skip_invalid_rows: bool = field(
        default=False, metadata={"help": "skip (and count) malformed rows instead of stopping at the first"})
    keep_row_order: bool = field(
        default=False, metadata={"help": "read training rows in file order, as OFA does (default: shuffled per epoch)"})
    eval_args: Optional[str] = field(
        default="{}", metadata={"help": 'generation options for validation, as JSON, e.g. \'{"beam": 5}\''})
    eval_print_samples: bool = field(default=False, metadata={"help": "log one hypothesis per validation batch"})
    seed: int = II("common.seed")


@functools.lru_cache(maxsize=None)
def _takes_update_num(forward) -> bool:
    """Whether a criterion's forward accepts ``update_num`` (asked once per criterion class, not per step)."""
    return "update_num" in inspect.signature(forward).parameters


def json_generation_args(flag: str, value: Optional[str]) -> Namespace:
    """Generation options given as a JSON object (``--eval-args``, ``--scst-args``), with errors naming the flag."""
    try:
        options = json.loads(value or "{}")
    except json.JSONDecodeError as err:
        raise OptionError(f"{flag}: not valid JSON ({err}): {value!r}") from None
    if not isinstance(options, dict):
        raise OptionError(f"{flag}: expected a JSON object, got {value!r}")
    return Namespace(**options)


class OFATask(FairseqTask):
    """What caption and refcoco share; subclasses build their dataset and validation metric."""

    cfg: OFATaskConfig

    def __init__(self, cfg: OFATaskConfig, codec: TextCodec):
        super().__init__(cfg)
        self.codec = codec
        self.dictionary = codec.dictionary
        self.generator = None

    @classmethod
    def setup_task(cls, cfg: OFATaskConfig, **kwargs):
        if not cfg.bpe_dir:
            raise OptionError("--bpe-dir: required (a directory with encoder.json, vocab.bpe and dict.txt)")
        dictionary = build_ofa_dictionary(os.path.join(cfg.bpe_dir, "dict.txt"), num_bins=cfg.num_bins,
                                          num_codes=cfg.code_dict_size)
        codec = TextCodec(cfg.bpe_dir, num_bins=cfg.num_bins, dictionary=dictionary)
        logger.info("dictionary: %d types (%d bins, %d codes)", len(dictionary), cfg.num_bins, cfg.code_dict_size)
        return cls(cfg, codec)

    # ------------------------------------------------------------------ data
    def data_paths(self) -> List[str]:
        if not self.cfg.data:
            raise OptionError("data: give the TSV files as 'train.tsv,valid.tsv' (the last one is for evaluation)")
        paths = [p for p in self.cfg.data.split(",") if p]
        for path in paths:
            if not os.path.isfile(path):
                raise MissingFileError(f"data file not found: {path} (from the data argument {self.cfg.data!r})")
        return paths

    def split_path(self, split: str, epoch: int = 1) -> str:
        """Evaluation splits read the last file; training rotates over the others, one per epoch."""
        paths = self.data_paths()
        if split != "train":
            return paths[-1]
        if len(paths) < 2:
            raise OptionError(f"data {self.cfg.data!r}: training needs at least 'train.tsv,valid.tsv'")
        return paths[(epoch - 1) % (len(paths) - 1)]

    def build_dataset(self, path: str, split: str) -> FairseqDataset:
        raise NotImplementedError

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        path = self.split_path(split, epoch)
        self.datasets[split] = self.build_dataset(path, split)
        logger.info("%s: %d rows of %s on this worker", split, len(self.datasets[split]), path)

    def dataset_options(self, split: str) -> Dict[str, Any]:
        """Keyword arguments every OFA dataset takes."""
        return dict(
            selected_cols=self.cfg.selected_cols,
            patch_image_size=self.cfg.patch_image_size,
            skip_invalid_rows=self.cfg.skip_invalid_rows,
            shuffle=split == "train" and not self.cfg.keep_row_order,
            seed=self.cfg.seed,
        )

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """Stock fairseq calls ``criterion(model, sample)``; OFA's tasks, and these, pass ``update_num`` too, so
        that ``--drop-worst-after``/``--drop-best-after`` can take effect (criteria that take it)."""
        if _takes_update_num(type(criterion).forward):
            criterion = functools.partial(criterion, update_num=update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def has_sharded_data(self, split: str) -> bool:
        """Several training files rotate per epoch, so fairseq must reload the train split each epoch."""
        return split == "train" and len(self.data_paths()) > 2

    def begin_epoch(self, epoch: int, model) -> None:
        self.report_row_counts(f"epoch {epoch} begins")

    def begin_valid_epoch(self, epoch: int, model) -> None:
        """Validation follows each training epoch: report that epoch's counts before the validation lines."""
        self.report_row_counts(f"validation of epoch {epoch} begins")

    def report_row_counts(self, moment: str) -> None:
        """Log each dataset's rows skipped as invalid (a warning) and boxes clipped to the image since the last
        report, then reset both counts. Reports come as each epoch and each validation begin, so the rows
        fairseq reads ahead (its first batch, before epoch 1) are counted too."""
        for split, dataset in self.datasets.items():
            skipped = getattr(dataset, "num_skipped_rows", 0)
            clipped = getattr(dataset, "num_clipped_rows", 0)
            if skipped or clipped:
                logger.log(logging.WARNING if skipped else logging.INFO,
                           "%s: skipped %d invalid rows, clipped the box of %d rows to the image, of %s (rows read "
                           "since the last report; %s)", split, skipped, clipped, dataset.tsv.path, moment)
                dataset.reset_row_counts()

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return self.cfg.max_source_positions, self.cfg.max_target_positions

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1, num_shards=1,
                           shard_id=0, num_workers=0, epoch=1, data_buffer_size=0, disable_iterator_cache=False,
                           skip_remainder_batch=False, grouped_shuffling=False, update_epoch_batch_itr=False):
        """Fixed-size batches over this worker's rows; the reader already shards the file, so the
        iterator is not sharded again, and every worker gets the same number of batches. The order
        is the dataset's (rows shuffled per epoch, or file order with --keep-row-order)."""
        dataset.set_epoch(epoch)
        batches = dataset.batch_by_size(dataset.ordered_indices(), max_tokens=max_tokens, max_sentences=max_sentences)
        return RowOrderBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=batches, seed=seed, num_shards=1,
            shard_id=0, num_workers=num_workers, epoch=epoch, buffer_size=data_buffer_size,
            skip_remainder_batch=skip_remainder_batch,
        )

    # ------------------------------------------------------------------ generation
    def generation_args(self) -> Namespace:
        return json_generation_args("--eval-args", self.cfg.eval_args)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        """fairseq's generator, with an n-gram blocker that blocks (see :mod:`.ngram_blocking`)."""
        return fix_ngram_blocking(super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs,
                                                          prefix_allowed_tokens_fn=prefix_allowed_tokens_fn))

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """OFA decodes from bos (its targets are teacher-forced after bos), not from eos."""
        with torch.no_grad():
            return generator.generate(models, sample, prefix_tokens=prefix_tokens, constraints=constraints,
                                      bos_token=self.dictionary.bos())

    def hypotheses(self, generator, model, sample) -> List[List[int]]:
        """Token ids of the best hypothesis per sample (eos stripped)."""
        outputs = self.inference_step(generator, [model], sample)
        eos = self.dictionary.eos()
        return [[t for t in out[0]["tokens"].tolist() if t != eos] for out in outputs]

    def maybe_print_sample(self, sample, hypothesis: str, reference: Any) -> None:
        if self.cfg.eval_print_samples:
            logger.info("example hypothesis: %s", hypothesis)
            logger.info("example reference: %s", reference)

    @staticmethod
    def sum_logging_outputs(logging_outputs, key: str) -> float:
        return utils.item(sum(log.get(key, 0) for log in logging_outputs))
