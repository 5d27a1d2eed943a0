"""Corpus-level scores for validation and evaluation: CIDEr-D, COCO caption metrics, Acc@0.5.

Every scorer takes the records of the WHOLE evaluation set, gathered from all ranks, as
``(sample_id, prediction, reference)`` tuples. Ids make the scores distribution-safe: a
sample seen twice (e.g. a sampler that pads the last batch with repeats) is counted once,
and a sample id with two different records is an error rather than a silent double count.

CIDEr is pycocoevalcap's scorer, which is CIDEr-D (clipped n-gram weights, Gaussian length
penalty with sigma 6, x10) exactly as OFA's training-time scorer: the only difference is
where the document frequencies come from (see :func:`cider`).
"""
from __future__ import annotations

import logging
import os
import pickle
from collections import defaultdict
from typing import Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer

from .boxes import box_iou, grounding_hits

logger = logging.getLogger(__name__)

CaptionRecord = Tuple[Hashable, str, Sequence[str]]
BoxRecord = Tuple[Hashable, Sequence[float], Sequence[float]]


def unique_records(records: Iterable[tuple], what: str = "record") -> Dict[Hashable, tuple]:
    """Records keyed by sample id; exact repeats are merged, conflicting ones rejected."""
    merged: Dict[Hashable, tuple] = {}
    for sample_id, *values in records:
        values = tuple(_comparable(v) for v in values)
        if sample_id in merged and merged[sample_id] != values:
            raise ValueError(f"sample id {sample_id!r} has two different {what}s: {merged[sample_id]} and {values}")
        merged[sample_id] = values
    if not merged:
        raise ValueError(f"no {what}s to score")
    return merged


def _comparable(value):
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_comparable(v) for v in value)
    return value


def load_cider_document_frequency(path: str) -> Tuple[Dict[tuple, float], float]:
    """OFA's ``--eval-cider-cached-tokens`` pickle: ``(document_frequency, ref_len)``.

    The pickle (written by Python 2, hence latin-1) maps ``document_frequency`` to
    {n-gram tuple: number of images whose references contain it} and ``ref_len`` to the
    number of images of that reference corpus.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--eval-cider-cached-tokens: file not found: {path}")
    with open(path, "rb") as handle:
        cached = pickle.load(handle, encoding="latin1")
    missing = {"document_frequency", "ref_len"} - set(cached)
    if missing:
        raise ValueError(f"--eval-cider-cached-tokens {path}: missing key(s) {sorted(missing)}")
    return cached["document_frequency"], float(cached["ref_len"])


class _CachedDocumentFrequencyCiderScorer(CiderScorer):
    """pycocoevalcap's CIDEr-D with a fixed document-frequency table instead of the references'.

    ``compute_cider`` sets ``ref_len`` from the number of scored samples; with a cached table
    the log of the table's own corpus size must be used, so that assignment is ignored.
    """

    def __init__(self, document_frequency: Dict[tuple, float], ref_len: float):
        self._log_ref_len = float(np.log(ref_len))
        super().__init__(n=4, sigma=6.0)
        self.document_frequency = defaultdict(float, document_frequency)

    @property
    def ref_len(self) -> float:
        return self._log_ref_len

    @ref_len.setter
    def ref_len(self, value) -> None:
        pass  # keep the cached corpus size (see class docstring)


def document_frequency_of(references: Iterable[Sequence[str]]) -> Tuple[Dict[tuple, float], float]:
    """``(document_frequency, ref_len)`` of a reference corpus, counted by pycocoevalcap's own scorer.

    Fixing this table (e.g. that of the whole validation set) makes per-sample CIDEr-D scores
    additive, so validation split across workers or batches scores exactly like one pass.
    """
    scorer = CiderScorer(n=4, sigma=6.0)
    for refs in references:
        scorer += ("", list(refs))
    scorer.compute_doc_freq()
    return dict(scorer.document_frequency), float(len(scorer.crefs))


def cider(records: Iterable[CaptionRecord], cached_document_frequency: Optional[str] = None,
          document_frequency: Optional[Tuple[Dict[tuple, float], float]] = None
          ) -> Tuple[float, Dict[Hashable, float]]:
    """Corpus CIDEr-D (0..~10 scale; OFA logs it as is, 1.4 meaning "140 CIDEr") and per-sample scores.

    Hypotheses and references must already be cleaned (OFA: punctuation removed); they are
    split on whitespace, no PTB tokenisation. Document frequencies come from
    ``cached_document_frequency`` (OFA's ``--eval-cider-cached-tokens`` pickle) or
    ``document_frequency`` (a ``(table, ref_len)`` pair, see :func:`document_frequency_of`)
    if given, else from the references being scored.
    """
    samples = unique_records(records, "caption record")
    if cached_document_frequency is not None:
        document_frequency = load_cider_document_frequency(cached_document_frequency)
    if document_frequency is not None:
        scorer = _CachedDocumentFrequencyCiderScorer(*document_frequency)
    else:
        scorer = CiderScorer(n=4, sigma=6.0)
    for sample_id, (hypothesis, references) in samples.items():
        if not references:
            raise ValueError(f"sample id {sample_id!r} has no references")
        scorer += (hypothesis, list(references))
    if document_frequency is not None:
        scores = scorer.compute_cider()
    else:
        _, scores = scorer.compute_score()
    return float(np.mean(scores)), dict(zip(samples.keys(), (float(s) for s in scores)))


def coco_caption_metrics(records: Iterable[CaptionRecord]) -> Dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr as the COCO caption server reports them.

    Raw strings are PTB-tokenised first (lowercase, punctuation removed) and CIDEr uses the
    references' own document frequencies, as OFA's offline ``coco_eval.py``. Needs java.
    SPICE is left out: it downloads Stanford CoreNLP models on first use.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    samples = unique_records(records, "caption record")
    tokenizer = PTBTokenizer()
    references = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, (_, refs) in samples.items()})
    hypotheses = tokenizer.tokenize({i: [{"caption": hyp}] for i, (hyp, _) in samples.items()})
    metrics: Dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(references, hypotheses, verbose=0)
    metrics.update({f"Bleu_{n + 1}": float(score) for n, score in enumerate(bleu)})
    metrics["METEOR"] = float(Meteor().compute_score(references, hypotheses)[0])
    metrics["ROUGE_L"] = float(Rouge().compute_score(references, hypotheses)[0])
    metrics["CIDEr"] = float(Cider().compute_score(references, hypotheses)[0])
    logger.info("SPICE skipped: it downloads Stanford CoreNLP models on first use")
    return metrics


def grounding_metrics(records: Iterable[BoxRecord], threshold: float = 0.5) -> Dict[str, float]:
    """``acc`` (share of predicted boxes with IoU >= threshold, OFA's Acc@0.5), ``miou`` and ``count``.

    Boxes are ``x0, y0, x1, y1`` in original-image pixels.
    """
    samples = unique_records(records, "box record")
    pred = torch.tensor([values[0] for values in samples.values()], dtype=torch.float32)
    target = torch.tensor([values[1] for values in samples.values()], dtype=torch.float32)
    if pred.shape[-1:] != (4,) or target.shape[-1:] != (4,):
        raise ValueError(f"boxes must have 4 coordinates, got shapes {tuple(pred.shape)} and {tuple(target.shape)}")
    return {
        "acc": grounding_hits(pred, target, threshold).float().mean().item(),
        "miou": box_iou(pred, target).mean().item(),
        "count": len(samples),
    }


def gather_records(records: List[tuple]) -> List[tuple]:
    """Gather ``records`` from every rank of torch.distributed (a no-op when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(records)
    gathered: List[Optional[List[tuple]]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, list(records))
    return [record for rank_records in gathered for record in rank_records]
