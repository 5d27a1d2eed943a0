"""Corpus-level scores for validation and evaluation: CIDEr-D, COCO caption metrics, Acc@0.5.

Every scorer takes the records of the WHOLE evaluation set, gathered from all ranks, as
``(sample_id, prediction, reference)`` tuples. Ids make the scores distribution-safe: a
sample seen twice (e.g. a sampler that pads the last batch with repeats) is counted once,
and a sample id with two different records is an error rather than a silent double count.

CIDEr is pycocoevalcap's scorer, which is CIDEr-D (clipped n-gram weights, Gaussian length
penalty with sigma 6, x10) exactly as OFA's training-time scorer: the only difference is
where the document frequencies come from (see :func:`cider`).

OFA's CIDEr document-frequency tables (``--eval-cider-cached-tokens`` and
``--scst-cider-cached-tokens``: ``cider_cached_tokens/coco-{valid,train}-words.p`` of
caption_data.zip, named in OFA-Sys/OFA ``run_scripts/caption/train_caption_stage2.sh``):

* Reader: OFA-Sys/OFA ``utils/cider/pyciderevalcap/ciderD/ciderD_scorer.py``
  (``CiderScorer.__init__`` with ``df_mode`` = the path) unpickles the file with
  ``encoding='latin1'`` under Python 3, takes ``ref_len = np.log(float(pkl['ref_len']))`` and
  uses ``pkl['document_frequency']`` as is, looking up ``document_frequency[ngram]`` for
  n-grams the references may lack: OFA needs a ``collections.defaultdict(float)`` there (a
  plain dict raises KeyError on an unseen n-gram).
* Writer: ``scripts/prepro_ngrams.py`` of ruotianluo/self-critical.pytorch (the ``-words.p``
  name and scst_loss's ``<eos>`` point there; OFA ships no writer, and the COCO file itself
  was not opened for this description). The pickle is a dict with two keys:
  ``document_frequency``, a ``defaultdict(float)`` mapping an n-gram, a tuple of 1 to 4 word
  strings (``str.split()`` of a reference; n = 1..4), to the number of images (float) whose
  set of references contains it (one document = all references of one image); and
  ``ref_len``, the number of images as a plain int (the count, not its log). Its references
  are Karpathy's lowercased, punctuation-free ``tokens`` with ``<eos>`` appended and words
  outside the training vocabulary replaced by ``UNK``; OFA's ``criterions/scst_loss.py``
  appends `` <eos>`` to hypotheses and references "to keep consistent with
  cider_cached_tokens", OFA's validation appends nothing (n-grams with ``<eos>`` are then
  never looked up). The script's 2017-2019 versions dump with ``cPickle.HIGHEST_PROTOCOL``
  under Python 2, i.e. pickle protocol 2 (later ones: protocol 2 under Python 3, protocol 0
  under Python 2). Both protocols name only two globals, ``collections.defaultdict`` and its
  default factory ``__builtin__.float``; n-gram words are (unicode) strings, the counts
  floats, ``ref_len`` an int: no numpy objects.

:func:`load_cider_document_frequency` therefore unpickles with an allow-list of those two
globals (and ``int`` as a default factory), so a crafted file cannot run code, and checks
the structure.
``python -m ofa_el.tools.cider_table`` writes such a table for any caption TSV.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer

from ..errors import InvalidDataError
from .boxes import box_iou, grounding_hits
from .safe_pickle import load_restricted_pickle

logger = logging.getLogger(__name__)

CaptionRecord = Tuple[Hashable, str, Sequence[str]]
#: Appended to every hypothesis and reference by OFA's SCST criterion (and by the script that wrote its
#: coco-*-words.p tables), so that ending a caption is scored too.
SCST_END_TOKEN = "<eos>"
BoxRecord = Tuple[Hashable, Sequence[float], Sequence[float]]


def unique_records(records: Iterable[tuple], what: str = "record") -> Dict[Hashable, tuple]:
    """Records keyed by sample id; exact repeats are merged, conflicting ones rejected."""
    merged: Dict[Hashable, tuple] = {}
    for sample_id, *values in records:
        values = tuple(_comparable(v) for v in values)
        if sample_id in merged and merged[sample_id] != values:
            raise InvalidDataError(f"sample id {sample_id!r} has two different {what}s: {merged[sample_id]} and "
                                   f"{values}")
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


#: The only globals a CIDEr table pickle names (protocols 0-2 write Python 2's ``__builtin__``).
_CIDER_TABLE_GLOBALS = frozenset({
    ("collections", "defaultdict"),
    ("builtins", "float"), ("builtins", "int"),
    ("__builtin__", "float"), ("__builtin__", "int"),
})


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_cider_table(cached, where: str) -> Tuple[Dict[tuple, float], float]:
    """Raise ValueError, naming ``where``, unless ``cached`` has the structure of OFA's table."""
    if not isinstance(cached, dict):
        raise InvalidDataError(f"{where}: expected a dict with keys 'document_frequency' and 'ref_len', "
                               f"got {type(cached).__name__}")
    missing = {"document_frequency", "ref_len"} - set(cached)
    if missing:
        raise InvalidDataError(f"{where}: missing key(s) {sorted(missing)}")
    ref_len = cached["ref_len"]
    if not _is_number(ref_len) or not np.isfinite(ref_len) or ref_len <= 0:
        raise InvalidDataError(f"{where}: ref_len must be a positive number (the number of images), got {ref_len!r}")
    table = cached["document_frequency"]
    if not isinstance(table, dict):
        raise InvalidDataError(f"{where}: document_frequency must be a dict, got {type(table).__name__}")
    if isinstance(table, defaultdict) and table.default_factory not in (None, float, int):
        raise InvalidDataError(f"{where}: document_frequency has default factory {table.default_factory!r}")
    for ngram, count in table.items():
        if not (isinstance(ngram, tuple) and ngram and all(isinstance(word, str) for word in ngram)):
            raise InvalidDataError(f"{where}: document_frequency key {ngram!r} is not an n-gram (a tuple of strings)")
        if not _is_number(count) or not 0 <= count <= ref_len:
            raise InvalidDataError(f"{where}: document_frequency[{ngram!r}] = {count!r}; expected a number of images "
                                   f"between 0 and ref_len = {ref_len!r}")
    return DocumentFrequency(table), float(ref_len)


def load_cider_document_frequency(path: str, option: str = "--eval-cider-cached-tokens"
                                  ) -> Tuple[Dict[tuple, float], float]:
    """OFA's ``--eval-cider-cached-tokens`` pickle: ``(document_frequency, ref_len)``.

    ``document_frequency`` maps an n-gram tuple to the number of images whose references
    contain it and ``ref_len`` is the number of images of that reference corpus (format: the
    module docstring). The file is read with latin-1 (Python 2 wrote it) through an unpickler
    that admits nothing but dicts, tuples, strings and numbers: an untrusted table cannot run
    code, as :func:`torch.load` with ``weights_only`` guards checkpoints. ``option`` names the flag
    the path came from in errors (``--scst-cider-cached-tokens`` for caption stage 2).
    """
    cached = load_restricted_pickle(path, option, "CIDEr table", allowed=_CIDER_TABLE_GLOBALS,
                                    holds="dicts, tuples, strings and numbers")
    return _check_cider_table(cached, f"{option} {path}")


class DocumentFrequency(dict):
    """{n-gram: number of images}; an n-gram it does not hold counts 0, and looking it up adds nothing, so
    one table serves every scoring call (a defaultdict would grow by every unseen n-gram scored)."""

    def __missing__(self, ngram: tuple) -> float:
        return 0.0


class _CachedDocumentFrequencyCiderScorer(CiderScorer):
    """pycocoevalcap's CIDEr-D with a fixed document-frequency table instead of the references'.

    ``compute_cider`` sets ``ref_len`` from the number of scored samples; with a cached table
    the log of the table's own corpus size must be used, so that assignment is ignored.
    """

    def __init__(self, document_frequency: Dict[tuple, float], ref_len: float):
        self._log_ref_len = float(np.log(ref_len))
        super().__init__(n=4, sigma=6.0)
        self.document_frequency = (document_frequency if isinstance(document_frequency, DocumentFrequency)
                                   else DocumentFrequency(document_frequency))

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
    images = 0
    for refs in references:
        # One image at a time: the cooked n-gram counts of a whole training set (~12 KB an image)
        # are dropped as soon as the image is counted.
        scorer += ("", list(refs))
        scorer.compute_doc_freq()
        scorer.crefs, scorer.ctest = [], []
        images += 1
    return DocumentFrequency(scorer.document_frequency), float(images)


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
            raise InvalidDataError(f"sample id {sample_id!r} has no references")
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
