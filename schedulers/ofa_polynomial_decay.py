"""``--lr-scheduler ofa_polynomial_decay``: polynomial decay with OFA's ``--warmup-ratio``.

OFA's recipes give the warm-up as a share of all updates (``--warmup-ratio 0.06``) and
let their forked ``train.py`` work out the total from the data. Without forking fairseq's
trainer, this scheduler computes the same total itself: ``T = max_epoch *
ceil(batches_per_epoch / update_freq)`` with ``batches_per_epoch = ceil(ceil(rows /
world_size) / batch_size)`` counted from the first training TSV (as OFA, which sizes every
epoch like the first). ``--total-num-update`` overrides the count. The lr for the update
after ``n`` completed ones is ``lr * n / W`` during warm-up (``W = floor(T * ratio)``),
then decays polynomially to ``--end-learning-rate`` at ``T``.
"""
import logging
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II

from ..errors import OptionError

logger = logging.getLogger(__name__)


@dataclass
class OFAPolynomialDecayConfig(FairseqDataclass):
    warmup_ratio: float = field(default=0.0, metadata={"help": "warm-up updates as a share of the total, in [0, 1)"})
    warmup_updates: int = field(default=0, metadata={"help": "warm-up updates (used when --warmup-ratio is 0)"})
    total_num_update: Optional[int] = field(
        default=None, metadata={"help": "total updates; default: counted from the training data and --max-epoch"})
    end_learning_rate: float = field(default=0.0, metadata={"help": "learning rate reached at the last update"})
    power: float = field(default=1.0, metadata={"help": "decay exponent (1 = linear)"})
    lr: List[float] = II("optimization.lr")
    max_epoch: int = II("optimization.max_epoch")
    max_update: int = II("optimization.max_update")
    update_freq: List[int] = II("optimization.update_freq")
    batch_size: Optional[int] = II("dataset.batch_size")
    distributed_world_size: int = II("distributed_training.distributed_world_size")
    data: Optional[str] = II("task.data")


def count_rows(path: str) -> int:
    """Lines of a TSV, read in blocks (multi-GB files stay out of memory)."""
    rows, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            rows += block.count(b"\n")
            last = block[-1:]
    return rows + (last != b"\n")


def first_training_file(cfg) -> Optional[str]:
    """The first path of an OFA task's comma-separated ``data`` (the epoch-1 training TSV), if it is a file."""
    try:
        data = cfg.data
    except Exception:  # the task has no `data` option: nothing to count
        return None
    first = str(data).split(",")[0] if data else ""
    return first if os.path.isfile(first) else None


def total_updates(rows: int, world_size: int, batch_size: int, update_freq: int, max_epoch: int) -> int:
    batches = math.ceil(math.ceil(rows / world_size) / batch_size)
    return max_epoch * math.ceil(batches / update_freq)


def polynomial_lr(num_updates: int, peak: float, warmup: int, total: int, end: float, power: float) -> float:
    if warmup > 0 and num_updates <= warmup:
        return peak * num_updates / warmup
    if num_updates >= total:
        return end
    remaining = 1.0 - (num_updates - warmup) / (total - warmup)
    return (peak - end) * remaining ** power + end


@register_lr_scheduler("ofa_polynomial_decay", dataclass=OFAPolynomialDecayConfig)
class OFAPolynomialDecaySchedule(FairseqLRScheduler):
    def __init__(self, cfg: OFAPolynomialDecayConfig, optimizer):
        super().__init__(cfg, optimizer)
        if not 0.0 <= cfg.warmup_ratio < 1.0:
            raise OptionError(f"--warmup-ratio: must lie in [0, 1), got {cfg.warmup_ratio}")
        self.peak = cfg.lr[0]
        self.total = self._total(cfg, first_training_file(cfg))
        self.warmup = int(self.total * cfg.warmup_ratio) if cfg.warmup_ratio > 0 else cfg.warmup_updates
        if self.warmup >= self.total:
            raise OptionError(f"warm-up ({self.warmup} updates) must be shorter than the run ({self.total} updates)")
        logger.info("ofa_polynomial_decay: %d updates, %d of warm-up, peak lr %g", self.total, self.warmup, self.peak)
        self.optimizer.set_lr(self.step_update(0))

    @staticmethod
    def _total(cfg, training_data: Optional[str]) -> int:
        if cfg.total_num_update:
            return int(cfg.total_num_update)
        if cfg.max_epoch and cfg.batch_size and training_data:
            rows = count_rows(training_data)
            return total_updates(rows, max(cfg.distributed_world_size, 1), cfg.batch_size, cfg.update_freq[0],
                                 cfg.max_epoch)
        if cfg.max_update:
            return int(cfg.max_update)
        raise OptionError("ofa_polynomial_decay needs --total-num-update, or --max-epoch with --batch-size and an OFA "
                          "task's training TSV, or --max-update")

    def step_update(self, num_updates: int) -> float:
        lr = polynomial_lr(num_updates, self.peak, self.warmup, self.total, self.cfg.end_learning_rate, self.cfg.power)
        self.optimizer.set_lr(lr)
        return lr
