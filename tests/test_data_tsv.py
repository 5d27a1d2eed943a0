"""TsvFile: seek-based random access, OFA's shard arithmetic, structural row errors."""
import pickle
import random

import pytest
import torch

from ofa_el.data.tsv import InvalidRowError, TsvFile, default_shard, index_rows, parse_selected_cols, shard_range

torch.set_num_threads(1)


def write_rows(path, rows, terminator="\n", final_newline=True):
    text = terminator.join("\t".join(row) for row in rows) + (terminator if final_newline else "")
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def make_rows(n, columns=4):
    # Varied lengths and non-ASCII text, so byte offsets differ from character offsets.
    return [tuple(f"r{i}c{c}" + "é" * (i % 3) + "x" * ((i * 7 + c) % 5) for c in range(columns)) for i in range(n)]


def test_random_access_returns_the_selected_columns_in_the_listed_order(tmp_path):
    rows = make_rows(50)
    tsv = TsvFile(write_rows(tmp_path / "a.tsv", rows), selected_cols="3,0,2", slice_id=0, slice_count=1)
    assert len(tsv) == 50
    order = list(range(50))
    random.Random(0).shuffle(order)
    for i in order:
        assert tsv[i] == (rows[i][3], rows[i][0], rows[i][2])


def test_all_columns_without_selection_and_last_row_without_newline(tmp_path):
    rows = make_rows(5)
    tsv = TsvFile(write_rows(tmp_path / "a.tsv", rows, final_newline=False), slice_id=0, slice_count=1)
    assert [tsv[i] for i in range(len(tsv))] == rows


def test_index_rows_matches_a_naive_scan(tmp_path):
    path = write_rows(tmp_path / "a.tsv", make_rows(30))
    data = open(path, "rb").read()
    expected = [0] + [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    assert index_rows(path).tolist() == expected


@pytest.mark.parametrize("total", [0, 1, 7, 16, 23])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shard_range_tiles_the_file_with_ofa_arithmetic(total, count):
    blocks = [shard_range(total, rank, count) for rank in range(count)]
    covered = [row for start, size in blocks for row in range(start, start + size)]
    assert covered == list(range(total))  # contiguous, in rank order, every row exactly once
    q, m = divmod(total, count)
    assert [size for _, size in blocks] == [q + 1] * m + [q] * (count - m)


def test_shards_of_a_file_read_every_row_exactly_once(tmp_path):
    rows = make_rows(23)
    path = write_rows(tmp_path / "a.tsv", rows)
    seen = []
    for rank in range(4):
        tsv = TsvFile(path, slice_id=rank, slice_count=4)
        assert tsv.total_rows == 23
        seen += [tsv[i] for i in range(len(tsv))]
    assert sorted(seen) == sorted(rows) and len(seen) == len(rows)


def test_default_shard_without_distributed_is_the_whole_file(tmp_path):
    assert default_shard() == (0, 1)
    assert len(TsvFile(write_rows(tmp_path / "a.tsv", make_rows(9)))) == 9


def test_row_numbers_in_errors_are_file_line_numbers_in_every_shard(tmp_path):
    rows = make_rows(10)
    rows[7] = rows[7][:3]  # line 8 has 3 columns
    path = write_rows(tmp_path / "a.tsv", rows)
    tsv = TsvFile(path, slice_id=1, slice_count=2)  # rows 6..10 (1-based)
    with pytest.raises(InvalidRowError) as info:
        tsv[2]
    assert (info.value.path, info.value.row) == (path, 8)
    assert f"{path}: row 8" in str(info.value) and "3 tab-separated columns, expected 4" in str(info.value)


def test_non_utf8_and_crlf_rows_are_named(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes(b"a\tb\nc\t\xff\xfe\nd\te\r\n")
    tsv = TsvFile(str(path), slice_id=0, slice_count=1)
    assert tsv[0] == ("a", "b")
    with pytest.raises(InvalidRowError, match=r"row 2: not valid UTF-8"):
        tsv[1]
    with pytest.raises(InvalidRowError, match=r"row 3: line ends with CR"):
        tsv[2]


def test_selected_column_out_of_range_fails_at_construction(tmp_path):
    path = write_rows(tmp_path / "a.tsv", make_rows(3, columns=5))
    with pytest.raises(InvalidRowError, match=r"a.tsv: row 1: --selected-cols 0,5 asks for column 5, but rows have 5"):
        TsvFile(path, "0,5", slice_id=0, slice_count=1)


@pytest.mark.parametrize("bad", ["0,x", "1,-2"])
def test_bad_selected_cols_option(bad):
    with pytest.raises(ValueError, match="--selected-cols"):
        parse_selected_cols(bad)


def test_missing_and_empty_files_fail_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        TsvFile(str(tmp_path / "nope.tsv"))
    (tmp_path / "empty.tsv").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.tsv"):
        TsvFile(str(tmp_path / "empty.tsv"))


def test_pickled_reader_reopens_its_own_handle(tmp_path):
    rows = make_rows(6)
    tsv = TsvFile(write_rows(tmp_path / "a.tsv", rows), slice_id=0, slice_count=1)
    assert tsv[5] == rows[5]  # opens the handle
    clone = pickle.loads(pickle.dumps(tsv))
    assert clone._handle is None
    assert [clone[i] for i in (3, 0, 5)] == [rows[3], rows[0], rows[5]]


def test_dataloader_workers_read_the_requested_rows(tmp_path):
    rows = make_rows(40)
    tsv = TsvFile(write_rows(tmp_path / "a.tsv", rows), selected_cols=[1], slice_id=0, slice_count=1)
    tsv[0]  # a handle opened in the parent must not leak into the workers' reads
    order = list(range(40))
    random.Random(1).shuffle(order)
    loader = torch.utils.data.DataLoader(tsv, sampler=order, batch_size=None, num_workers=2)
    assert [tuple(row) for row in loader] == [(rows[i][1],) for i in order]


def test_invalid_row_error_survives_pickling():
    err = pickle.loads(pickle.dumps(InvalidRowError("f.tsv", 3, "bad")))
    assert (err.path, err.row, err.reason, str(err)) == ("f.tsv", 3, "bad", "f.tsv: row 3: bad")
