"""OFA's warm-up-ratio polynomial decay, without forking fairseq's trainer."""
from types import SimpleNamespace

import pytest
from fairseq.optim import FairseqOptimizer

from ofa_el.schedulers.ofa_polynomial_decay import (
    OFAPolynomialDecaySchedule,
    count_rows,
    first_training_file,
    total_updates,
)


class Optimizer(FairseqOptimizer):
    """Records the lr the scheduler sets."""

    def __init__(self):
        self.lr = None

    def set_lr(self, lr):
        self.lr = lr

    def get_lr(self):
        return self.lr


def cfg(**kw):
    base = dict(warmup_ratio=0.06, warmup_updates=0, total_num_update=None, end_learning_rate=0.0, power=1.0,
                lr=[1e-5], max_epoch=2, max_update=0, update_freq=[4], batch_size=8, distributed_world_size=4,
                data=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_total_matches_ofa_formula(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"{i}\tx\n" for i in range(1001)))
    assert count_rows(str(tsv)) == 1001
    assert first_training_file(cfg(data=f"{tsv},{tmp_path / 'val.tsv'}")) == str(tsv)
    # ceil(1001/4) = 251 rows per rank -> 32 batches of 8 -> ceil(32/4) = 8 updates per epoch, 2 epochs
    assert total_updates(1001, 4, 8, 4, 2) == 16
    sched = OFAPolynomialDecaySchedule(cfg(data=f"{tsv},{tmp_path / 'val.tsv'}", warmup_ratio=0.25), Optimizer())
    assert (sched.total, sched.warmup) == (16, 4)


def test_lr_curve():
    sched = OFAPolynomialDecaySchedule(cfg(total_num_update=100, warmup_ratio=0.1), Optimizer())
    assert sched.step_update(0) == 0.0  # OFA's first update runs at lr 0
    assert sched.step_update(5) == pytest.approx(0.5e-5)
    assert sched.step_update(10) == pytest.approx(1e-5)
    assert sched.step_update(55) == pytest.approx(1e-5 * (1 - 45 / 90))
    assert sched.step_update(100) == 0.0 and sched.step_update(150) == 0.0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="--warmup-ratio"):
        OFAPolynomialDecaySchedule(cfg(total_num_update=10, warmup_ratio=1.5), Optimizer())
    with pytest.raises(ValueError, match="--total-num-update"):
        OFAPolynomialDecaySchedule(cfg(max_epoch=0), Optimizer())
