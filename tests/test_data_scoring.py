"""CIDEr-D against pycocoevalcap called directly, the cached document-frequency path, COCO metrics."""
import pickle

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider import Cider

from conftest import naive_ofa_table
from ofa_el.data.scoring import cider, coco_caption_metrics

torch.set_num_threads(1)

RECORDS = [
    ("1", "a red circle at the top left", ["a red circle at the top left", "there is a red circle at the top left",
                                           "a small red circle"]),
    ("2", "a blue square", ["a blue square and a green triangle", "two shapes a blue square and a green triangle"]),
    ("3", "a green triangle", ["a yellow diamond at the bottom", "a single yellow diamond"]),
    ("4", "", ["a purple circle", "the purple circle"]),
]


def test_cider_equals_pycocoevalcap_cider():
    score, per_sample = cider(RECORDS)
    expected, expected_scores = Cider().compute_score({i: refs for i, _, refs in RECORDS},
                                                      {i: [hyp] for i, hyp, _ in RECORDS})
    assert score == pytest.approx(expected, rel=1e-12)
    assert [per_sample[i] for i, _, _ in RECORDS] == pytest.approx(list(expected_scores), rel=1e-12)
    assert per_sample["1"] > per_sample["2"] > per_sample["3"] == per_sample["4"] == 0


def test_repeated_records_count_once_and_conflicts_fail():
    assert cider(RECORDS + RECORDS[:2])[0] == pytest.approx(cider(RECORDS)[0], rel=1e-12)
    with pytest.raises(ValueError, match="sample id '1' has two different"):
        cider(RECORDS + [("1", "another caption", RECORDS[0][2])])
    with pytest.raises(ValueError, match="no caption records"):
        cider([])


def write_document_frequency(path, corpus):
    """OFA's cached-tokens pickle for ``corpus`` (lists of references), computed naively, as a plain dict."""
    table = naive_ofa_table(corpus)
    with open(path, "wb") as handle:
        pickle.dump(dict(table, document_frequency=dict(table["document_frequency"])), handle, protocol=2)


def test_cached_document_frequency_scores_like_the_full_corpus(tmp_path):
    # With the df table of the full set, each sample of a subset must score exactly as it does
    # when the full set is scored with its own df.
    path = tmp_path / "words.p"
    write_document_frequency(path, [refs for _, _, refs in RECORDS])
    _, full = cider(RECORDS)
    subset = RECORDS[:2]
    score, per_sample = cider(subset, cached_document_frequency=str(path))
    assert per_sample == pytest.approx({i: full[i] for i, _, _ in subset}, rel=1e-12)
    assert score == pytest.approx(np.mean([full[i] for i, _, _ in subset]), rel=1e-12)
    assert cider(subset)[1]["1"] != pytest.approx(full["1"])  # the subset's own df differs


def test_cached_document_frequency_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--eval-cider-cached-tokens: file not found: .*nope.p"):
        cider(RECORDS, cached_document_frequency=str(tmp_path / "nope.p"))
    with open(tmp_path / "bad.p", "wb") as handle:
        pickle.dump({"document_frequency": {}}, handle)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['ref_len'\]"):
        cider(RECORDS, cached_document_frequency=str(tmp_path / "bad.p"))


@pytest.mark.slow  # starts java three times (PTB tokenizer, METEOR), ~15 s
def test_coco_caption_metrics():
    records = [(i, refs[0], refs) for i, _, refs in RECORDS]  # hypothesis = first reference
    perfect = coco_caption_metrics(records)
    assert set(perfect) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert perfect["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ROUGE_L"] == pytest.approx(1.0, abs=1e-6)
    worse = coco_caption_metrics(RECORDS)
    assert all(worse[name] < perfect[name] for name in perfect)
