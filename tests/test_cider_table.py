"""CIDEr document-frequency tables: the restricted loader refuses code, and the cider_table tool writes OFA's format."""
import datetime
import os
import pickle
import re
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from conftest import naive_ofa_table
from ofa_el.data.scoring import cider, document_frequency_of, load_cider_document_frequency
from ofa_el.data.text import clean_references
from ofa_el.tools import cider_table
from ofa_el.tools.errors import run_cli

RECORDS = [
    ("1", "a red circle at the top left", ["a red circle at the top left", "there is a red circle at the top left",
                                           "a small red circle"]),
    ("2", "a blue square", ["a blue square and a green triangle", "two shapes a blue square and a green triangle"]),
    ("3", "a green triangle", ["a yellow diamond at the bottom", "a single yellow diamond"]),
]


def write(path, obj, protocol=2):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)
    return str(path)


# ------------------------------------------------------------------------------------ the restricted loader
class RunsShellCommand:
    """Unpickling this calls ``os.system(command)``: what a crafted table would do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    payload = {"document_frequency": RunsShellCommand(f"touch {marker}"), "ref_len": 1}
    path = write(tmp_path / "coco-valid-words.p", payload, protocol)
    # the payload is live: plain pickle would run it
    control = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(RunsShellCommand(f"touch {control}"), protocol=protocol))
    assert control.exists()

    system = f"{os.system.__module__}.system"  # posix.system on Linux
    with pytest.raises(ValueError, match=re.escape(f"{path}: refusing to load '{system}': a CIDEr table holds only")):
        load_cider_document_frequency(path)
    with pytest.raises(ValueError, match="refusing to load"):
        cider(RECORDS, cached_document_frequency=path)
    assert not marker.exists()


def test_a_harmless_but_foreign_global_is_refused(tmp_path):
    path = write(tmp_path / "dated.p", {"document_frequency": {("a",): 1.0}, "ref_len": datetime.date(2020, 1, 1)})
    with pytest.raises(ValueError, match=re.escape(f"{path}: refusing to load 'datetime.date'")):
        load_cider_document_frequency(path)


@pytest.mark.parametrize("table, message", [
    ({"document_frequency": {("a",): 1.0}}, r"missing key\(s\) \['ref_len'\]"),
    ([("a",), 1.0], "expected a dict with keys 'document_frequency' and 'ref_len', got list"),
    ({"document_frequency": {("a",): 1.0}, "ref_len": 0}, "ref_len must be a positive number"),
    ({"document_frequency": {("a",): 1.0}, "ref_len": "5"}, "ref_len must be a positive number"),
    ({"document_frequency": [("a",)], "ref_len": 5}, "document_frequency must be a dict, got list"),
    ({"document_frequency": {"a": 1.0}, "ref_len": 5}, r"key 'a' is not an n-gram \(a tuple of strings\)"),
    ({"document_frequency": {(1, 2): 1.0}, "ref_len": 5}, r"key \(1, 2\) is not an n-gram"),
    ({"document_frequency": {("a",): "1"}, "ref_len": 5}, r"document_frequency\[\('a',\)\] = '1'"),
    ({"document_frequency": {("a",): 6.0}, "ref_len": 5}, "between 0 and ref_len = 5"),
])
def test_a_table_of_the_wrong_structure_is_refused_naming_the_file(tmp_path, table, message):
    path = write(tmp_path / "wrong.p", table)
    with pytest.raises(ValueError, match=re.escape(f"--eval-cider-cached-tokens {path}: ") + ".*" + message):
        load_cider_document_frequency(path)


def test_a_file_that_is_not_a_pickle_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "text.p"
    path.write_text("document_frequency ref_len\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable CIDEr table pickle")):
        load_cider_document_frequency(str(path))


@pytest.mark.parametrize("protocol", [0, 2])
def test_a_table_in_ofa_format_loads_and_scores_like_the_references(tmp_path, protocol):
    table = naive_ofa_table([refs for _, _, refs in RECORDS])
    path = write(tmp_path / "coco-valid-words.p", table, protocol)
    with open(path, "rb") as handle:  # the globals OFA's Python-2-era protocols name
        assert b"collections\ndefaultdict" in handle.read()
    document_frequency, ref_len = load_cider_document_frequency(path)
    assert ref_len == 3.0
    assert document_frequency == table["document_frequency"]
    assert document_frequency[("red", "circle")] == 1.0 and document_frequency[("a",)] == 3.0

    score, per_sample = cider(RECORDS, cached_document_frequency=path)
    expected, expected_scores = Cider().compute_score({i: refs for i, _, refs in RECORDS},
                                                      {i: [hyp] for i, hyp, _ in RECORDS})
    assert score == pytest.approx(expected, rel=1e-12)
    assert [per_sample[i] for i, _, _ in RECORDS] == pytest.approx(list(expected_scores), rel=1e-12)
    assert score > 0.5


def test_document_frequency_of_counts_images_not_references():
    table, images = document_frequency_of([refs for _, _, refs in RECORDS])
    assert images == 3.0
    assert table == naive_ofa_table([refs for _, _, refs in RECORDS])["document_frequency"]


# ------------------------------------------------------------------------------------ the cider_table tool
IMAGE = "aGVsbG8gaW1hZ2U="  # stands for the base64 image column, never decoded
TRAIN_ROWS = [  # one caption per row, an image's rows not adjacent (OFA: uniq-id, image-id, caption, labels, image)
    ("7_0", "7", "A red circle, at the top-left.", "circle", IMAGE),
    ("9_0", "9", "a blue square  and a green triangle", "square&&triangle", IMAGE),
    ("7_1", "7", "the red circle!", "circle", IMAGE),
    ("9_1", "9", "two shapes: a blue square & a triangle", "square&&triangle", IMAGE),
    ("7_2", "7", "a small red circle", "circle", IMAGE),
]
VAL_ROWS = [  # one row per image, references joined by &&
    ("11", "11", "a yellow diamond at the bottom&&a single yellow diamond.", "diamond", IMAGE),
    ("12", "12", "a red circle at the top&&there is a red circle", "circle", IMAGE),
]


def run_tool(argv):
    """``python -m ofa_el.tools.cider_table argv`` in this process (through run_cli): its exit status."""
    try:
        return run_cli(lambda: cider_table.main(argv))
    except SystemExit as stop:
        return stop.code


def write_tsv(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def grouped_references(rows):
    """Cleaned references per image id, grouped here independently of the tool."""
    groups = {}
    for _, image_id, caption, _, _ in rows:
        groups.setdefault(image_id, []).extend(clean_references(caption))
    return list(groups.values())


@pytest.mark.parametrize("rows", [TRAIN_ROWS, VAL_ROWS, TRAIN_ROWS + VAL_ROWS], ids=["train", "val", "both"])
def test_tool_writes_the_document_frequencies_of_the_cleaned_references(tmp_path, capsys, rows):
    data = write_tsv(tmp_path / "captions.tsv", rows)
    output = str(tmp_path / "my-words.p")
    assert run_tool([data, "-o", output]) == 0
    corpus = grouped_references(rows)
    expected_table, expected_images = document_frequency_of(corpus)
    references = sum(len(refs) for refs in corpus)
    assert capsys.readouterr().out.strip() == (
        f"{len(corpus)} images, {references} references, {len(expected_table)} n-grams (n = 1..4) -> {output}")

    # OFA's loader: latin-1 pickle, log of ref_len, a defaultdict(float) for unseen n-grams
    with open(output, "rb") as handle:
        ofa = pickle.load(handle, encoding="latin1")
    assert set(ofa) == {"document_frequency", "ref_len"}
    assert type(ofa["ref_len"]) is int and ofa["ref_len"] == len(corpus) == expected_images
    assert np.log(float(ofa["ref_len"])) == pytest.approx(np.log(len(corpus)))
    assert type(ofa["document_frequency"]) is defaultdict and ofa["document_frequency"].default_factory is float
    assert dict(ofa["document_frequency"]) == expected_table
    assert ofa["document_frequency"][("never", "seen")] == 0.0
    assert all(type(v) is float for v in expected_table.values())
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(output).st_mode & 0o777 == 0o666 & ~umask

    # and ours: same table, and scoring with the file equals scoring with the in-memory table
    assert load_cider_document_frequency(output) == (expected_table, float(len(corpus)))
    records = [(k, refs[0], refs[1:] or refs) for k, refs in enumerate(corpus)]
    from_file = cider(records, cached_document_frequency=output)
    in_memory = cider(records, document_frequency=(expected_table, expected_images))
    assert from_file == in_memory


def test_tool_groups_train_rows_by_image_and_cleans_like_validation(tmp_path, capsys):
    output = str(tmp_path / "train-words.p")
    assert run_tool([write_tsv(tmp_path / "train.tsv", TRAIN_ROWS), "-o", output]) == 0
    table, images = load_cider_document_frequency(output)
    assert images == 2.0  # images 7 and 9, not 5 rows
    assert table[("red", "circle")] == 1.0  # three references of image 7: one document
    assert table[("a",)] == 2.0
    assert table[("A", "red", "circle", "at")] == 1.0  # punctuation gone, case kept (validation's cleaning)
    assert ("topleft",) in table and ("circle,",) not in table and ("&",) not in table
    assert all(1 <= len(ngram) <= 4 for ngram in table)


def test_tool_append_eos_ends_every_reference_as_ofa_scst_does(tmp_path, capsys):
    data = write_tsv(tmp_path / "stage2.tsv", VAL_ROWS)
    plain, with_eos = str(tmp_path / "plain.p"), str(tmp_path / "eos.p")
    assert run_tool([data, "-o", plain]) == 0
    assert run_tool([data, "-o", with_eos, "--append-eos"]) == 0
    plain_table, _ = load_cider_document_frequency(plain)
    eos_table, _ = load_cider_document_frequency(with_eos)
    expected, _ = document_frequency_of([[ref + " <eos>" for ref in refs] for refs in grouped_references(VAL_ROWS)])
    assert eos_table == expected
    assert eos_table[("diamond", "<eos>")] == 1.0 and eos_table[("<eos>",)] == 2.0
    assert all(ngram.index("<eos>") == len(ngram) - 1 for ngram in eos_table if "<eos>" in ngram)
    assert {k: v for k, v in eos_table.items() if "<eos>" not in k} == plain_table


def test_tool_reads_other_columns_and_several_files(tmp_path, capsys):
    swapped = [(caption, image_id) for _, image_id, caption, _, _ in TRAIN_ROWS]
    first = write_tsv(tmp_path / "a.tsv", swapped[:3])
    second = write_tsv(tmp_path / "b.tsv", swapped[3:])
    output = str(tmp_path / "words.p")
    assert run_tool([first, second, "-o", output, "--selected-cols", "1,0"]) == 0
    assert load_cider_document_frequency(output) == document_frequency_of(grouped_references(TRAIN_ROWS))


@pytest.mark.parametrize("make_args, message", [
    (lambda d, t: [str(t / "missing.tsv"), "-o", str(t / "x.p")], "file not found: .*missing.tsv"),
    (lambda d, t: [d, "-o", str(t / "no" / "such" / "dir.p")], r"-o .*dir.p: directory .*such does not exist"),
    (lambda d, t: [d, "-o", str(t)], "is a directory"),
    (lambda d, t: [d, "-o", str(t / "x.p"), "--selected-cols", "2"], "expected two columns IMAGE_ID,CAPTION"),
    (lambda d, t: [d, "-o", str(t / "x.p"), "--selected-cols", "1,x"], "expected comma-separated column indices"),
    (lambda d, t: [d, "-o", str(t / "x.p"), "--selected-cols", "1,7"], "row 1: --selected-cols 1,7 asks for column 7"),
])
def test_tool_user_errors_exit_2(tmp_path, capsys, make_args, message):
    data = write_tsv(tmp_path / "captions.tsv", VAL_ROWS)
    assert run_tool(make_args(data, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "x.p").exists()


@pytest.mark.parametrize("rows, message", [
    (VAL_ROWS + [("13", "13", "a circle&&...", "circle", IMAGE)], r"row 3: caption column 2: reference\(s\) \[2\] of 2 empty"),
    (VAL_ROWS + [("13", "13", "a circle")], "row 3: has 3 tab-separated columns, expected 5"),
])
def test_tool_bad_rows_name_file_and_row_and_write_nothing(tmp_path, capsys, rows, message):
    data = write_tsv(tmp_path / "bad.tsv", rows)
    output = tmp_path / "words.p"
    assert run_tool([data, "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: "), err
    assert re.search(message, err), err
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tsv"]  # no temporary file left behind


def test_tool_write_failure_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    data = write_tsv(tmp_path / "captions.tsv", VAL_ROWS)
    output = tmp_path / "words.p"
    output.write_bytes(b"previous table")

    def disk_full(obj, handle, protocol):
        handle.write(b"half a pickle")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cider_table.pickle, "dump", disk_full)
    assert run_tool([data, "-o", str(output)]) == 2
    assert capsys.readouterr().err.startswith("error: [Errno 28] No space left on device")
    assert output.read_bytes() == b"previous table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.tsv", "words.p"]


def test_tool_command_line_errors_have_no_traceback(tmp_path, subprocess_env):
    data = write_tsv(tmp_path / "captions.tsv", VAL_ROWS)
    for args, message in (([str(tmp_path / "missing.tsv"), "-o", str(tmp_path / "x.p")], "error: file not found: "),
                          ([data, "-o", str(tmp_path / "nodir" / "x.p")], "error: -o ")):
        done = subprocess.run([sys.executable, "-m", "ofa_el.tools.cider_table", *args], capture_output=True,
                              text=True, env=subprocess_env, timeout=120)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
