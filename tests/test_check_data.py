"""tools/check_data.py: each bad row as file:row: reason, summaries, exit status; per-epoch row-count logging."""
import base64
import io
import logging
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import run_command
from ofa_el.data.refcoco_dataset import RefcocoDataset
from ofa_el.data.text import TextCodec
from ofa_el.tasks.ofa_task import OFATask, OFATaskConfig
from ofa_el.synthetic.bpe import write_bpe
from ofa_el.tools.check_data import block_bounds, main

torch.set_num_threads(1)


def image_b64(width=40, height=20):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_lines(path, lines):
    """Rows given as str (tab-joined fields) or as raw bytes (a row that is not valid UTF-8, or ends in CR)."""
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines))
    return str(path)


def refcoco(uid, text="the red one", region="1,2,30,18", image=None):
    return "\t".join([uid, "7", text, region, image if image is not None else image_b64()])


def caption(uid, text="a red square", image=None):
    return "\t".join([uid, "7", text, "labels", image if image is not None else image_b64()])


NOT_AN_IMAGE = base64.b64encode(b"not an image").decode("ascii")
REGION_OUTSIDE = ("region column: box '1,2,45,8' lies outside the 40x20 image by 5 px (x1 = 45 > width 40); "
                  "only boxes within 1 px of the image are clipped")

#: (row, exact reason) of each bad row; row 1 sets the column count, so it must be good.
REFCOCO_BAD = [
    (2, "has 4 tab-separated columns, expected 5"),
    (3, "image column: invalid base64 (Only base64 data is allowed)"),
    (4, "image column: undecodable or truncated image (UnidentifiedImageError: not an image format PIL can read)"),
    (5, "text column is empty after cleaning: ',.!? '"),
    (6, "region column: expected 4 comma-separated numbers x0,y0,x1,y1, got '1,2,3'"),
    (7, "region column: x1 <= x0 in '30,2,10,8' (corners x0,y0,x1,y1 expected, not x,y,w,h?)"),
    (8, REGION_OUTSIDE),
    (9, "not valid UTF-8 at byte 10"),
    (10, "line ends with CR (CRLF line endings); OFA TSV files use LF"),
]
CAPTION_BAD = [
    (2, "has 6 tab-separated columns, expected 5"),
    (3, "image column: invalid base64 (Only base64 data is allowed)"),
    (4, "image column: undecodable or truncated image (UnidentifiedImageError: not an image format PIL can read)"),
    (5, "caption column is empty after cleaning: ' ?!. '"),
    (6, "not valid UTF-8 at byte 10"),
]


@pytest.fixture
def refcoco_file(tmp_path):
    return write_lines(tmp_path / "refcoco_train.tsv", [
        refcoco("good-1"),
        "\t".join(["short", "7", "the red one", "1,2,30,18"]),
        refcoco("base64", image="abc$def"),
        refcoco("image", image=NOT_AN_IMAGE),
        refcoco("text", text=",.!? "),
        refcoco("malformed", region="1,2,3"),
        refcoco("inverted", region="30,2,10,8"),
        refcoco("outside", region="1,2,45,8"),
        b"utf8\t7\tcaf\xe9\t1,2,30,18\t" + image_b64().encode(),
        refcoco("crlf") + "\r",
        refcoco("clipped", region="1,2,40.5,20.25"),  # half a pixel right, a quarter below: clipped
        refcoco("good-2", region="0,0,40,20"),
    ])


@pytest.fixture
def caption_files(tmp_path):
    train = write_lines(tmp_path / "caption_train.tsv", [
        caption("good-1"),
        caption("extra-column") + "\textra",
        caption("base64", image="abc$def"),
        caption("image", image=NOT_AN_IMAGE),
        caption("empty", text=" ?!. "),
        b"utf8\t7\tcaf\xe9\tlabels\t" + image_b64().encode(),
        caption("good-2", text="two shapes."),
    ])
    # not a train file: the caption column holds &&-joined references, each must survive cleaning
    valid = write_lines(tmp_path / "caption_val.tsv", [
        caption("refs", text="a red square&&the square is red"),
        caption("empty-ref", text="a red square&& !! &&a shape"),
    ])
    return train, valid


def run(capsys, *argv):
    return run_command(capsys, main, *argv)


def bad_lines(path, bad):
    return [f"{path}:{row}: {reason}" for row, reason in bad]


def without_times(lines):
    return [re.sub(r"; [0-9.]+ s, [0-9]+ rows/s$", "", line) for line in lines]


def test_refcoco_file_lists_every_bad_row_and_counts_the_clipped_one(capsys, refcoco_file):
    status, lines, err = run(capsys, "--task", "refcoco", refcoco_file)
    assert status == 1 and err == ""
    assert lines[:-3] == bad_lines(refcoco_file, REFCOCO_BAD)
    assert lines[-3] == "summary:"
    assert re.fullmatch(re.escape(f"{refcoco_file}: 12 rows: 3 ok, 9 bad, 1 clipped; ") + r"\d+\.\d\d s, \d+ rows/s",
                        lines[-2])
    assert re.fullmatch(r"total, 1 file\(s\): 12 rows: 3 ok, 9 bad, 1 clipped; \d+\.\d\d s, \d+ rows/s", lines[-1])


def test_caption_split_follows_the_file_name(capsys, caption_files):
    train, valid = caption_files
    status, lines, _ = run(capsys, "--task", "caption", train, valid)
    assert status == 1
    assert lines[:-4] == bad_lines(train, CAPTION_BAD) + [
        f"{valid}:2: caption column: reference(s) [2] of 3 empty after cleaning"]
    assert without_times(lines[-4:]) == [
        "summary:",
        f"{train} (as split train): 7 rows: 2 ok, 5 bad, 0 clipped",
        f"{valid} (as split valid): 2 rows: 1 ok, 1 bad, 0 clipped",
        "total, 2 file(s): 9 rows: 3 ok, 6 bad, 0 clipped",
    ]
    # read as train, a reference list is one caption (its && are punctuation), so the row is fine
    status, lines, _ = run(capsys, "--task", "caption", "--split", "train", valid)
    assert status == 0 and without_times(lines) == [
        "summary:", f"{valid} (as split train): 2 rows: 2 ok, 0 bad, 0 clipped",
        "total, 1 file(s): 2 rows: 2 ok, 0 bad, 0 clipped"]


def test_clean_file_exits_zero(capsys, tmp_path):
    path = write_lines(tmp_path / "refcoco_val.tsv", [refcoco("a"), refcoco("b", region="-0.5,0,40,20.5")])
    status, lines, err = run(capsys, "--task", "refcoco", path)
    assert status == 0 and err == ""
    assert without_times(lines) == ["summary:", f"{path}: 2 rows: 2 ok, 0 bad, 1 clipped",
                                    "total, 1 file(s): 2 rows: 2 ok, 0 bad, 1 clipped"]


def test_two_workers_print_the_same_lines_in_file_order(capsys, refcoco_file, caption_files):
    assert len(block_bounds(12, 2)) == 6  # the 12-row file really is split over the workers
    for task, files in (("refcoco", [refcoco_file]), ("caption", list(caption_files))):
        one = run(capsys, "--task", task, *files, "--workers", "1")
        two = run(capsys, "--task", task, *files, "--workers", "2")
        assert one[0] == two[0] == 1
        assert without_times(one[1]) == without_times(two[1])


def test_block_bounds_tile_the_rows_contiguously():
    for rows, workers in ((1, 1), (12, 2), (1000, 1), (5000, 3)):
        blocks = block_bounds(rows, workers)
        assert blocks[0][0] == 0 and blocks[-1][1] == rows
        assert all(stop == next_start for (_, stop), (next_start, _) in zip(blocks, blocks[1:]))
        assert max(stop - start for start, stop in blocks) <= 256


def test_as_a_module_with_options(refcoco_file, subprocess_env, capsys):
    in_process = run(capsys, "--task", "refcoco", refcoco_file, "--selected-cols", "0,4,2,3", "--num-bins", "1000")
    result = subprocess.run([sys.executable, "-m", "ofa_el.tools.check_data", "--task", "refcoco", refcoco_file,
                             "--selected-cols", "0,4,2,3", "--num-bins", "1000"],
                            capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert result.returncode == 1
    assert without_times(result.stdout.splitlines()) == without_times(in_process[1])
    assert "Traceback" not in result.stderr
    assert "DEBUG" not in result.stderr  # fairseq's import leaves the root logger at DEBUG; PIL would log every chunk


def test_usage_errors_exit_2_without_traceback(capsys, tmp_path, refcoco_file):
    missing = str(tmp_path / "missing.tsv")
    status, lines, err = run(capsys, "--task", "refcoco", refcoco_file, missing)
    assert status == 2 and lines == []  # nothing is checked when one file is missing
    assert err == f"error: data file not found: {missing}\n"
    status, _, err = run(capsys, "--task", "refcoco", "--selected-cols", "0,4,2", refcoco_file)
    assert status == 2
    assert err == "error: --selected-cols '0,4,2': --task refcoco needs 4 columns (uniq_id, image, text, region)\n"
    status, _, err = run(capsys, "--task", "refcoco", "--selected-cols", "0,4,2,7", refcoco_file)
    assert status == 2 and err.startswith(f"error: {refcoco_file}: row 1: --selected-cols 0,4,2,7 asks for column 7")
    status, _, err = run(capsys, "--task", "refcoco", "--num-bins", "1", refcoco_file)
    assert status == 2 and err == "error: --num-bins must be at least 2, got 1\n"
    for argv in (["--task", "vqa", refcoco_file], ["--task", "refcoco", "--workers", "0", refcoco_file]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith("error: ")


# -- OFATask reports both counts as epochs and validations begin, and resets them ------------------------------------------

def test_begin_epoch_logs_skipped_and_clipped_rows_then_resets(tmp_path, caplog):
    write_bpe(str(tmp_path / "bpe"), ["the red one", "the red square"], vocab_size=300)
    codec = TextCodec(str(tmp_path / "bpe"), num_bins=100)
    path = write_lines(tmp_path / "refcoco_train.tsv", [
        refcoco("clipped", region="1,2,40.5,20"), refcoco("outside", region="1,2,45,8"), refcoco("good")])
    dataset = RefcocoDataset(path, "train", codec, patch_image_size=16, num_bins=100, skip_invalid_rows=True,
                             slice_id=0, slice_count=1)
    task = OFATask(OFATaskConfig(), codec)
    task.datasets["train"] = dataset
    for _ in range(2):  # two epochs' worth of reads before the log
        assert [dataset[i] is None for i in range(3)] == [False, True, False]

    with caplog.at_level(logging.INFO, logger="ofa_el.tasks.ofa_task"):
        task.begin_epoch(3, model=None)
        dataset[0]  # only a clipped row in the next epoch: an info line, not a warning
        task.begin_valid_epoch(3, model=None)  # the end of epoch 3: its counts come before validation's lines
        task.begin_epoch(4, model=None)  # nothing counted since: nothing logged
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ofa_el.tasks.ofa_task"]
    assert records == [
        (logging.WARNING, f"train: skipped 2 invalid rows, clipped the box of 2 rows to the image, of {path} "
                          "(rows read since the last report; epoch 3 begins)"),
        (logging.INFO, f"train: skipped 0 invalid rows, clipped the box of 1 rows to the image, of {path} "
                       "(rows read since the last report; validation of epoch 3 begins)"),
    ]
    assert (dataset.num_skipped_rows, dataset.num_clipped_rows) == (0, 0)
