"""Caption / refcoco datasets: BPE round trip, OFA token layout, cleaning, collater, bad rows."""
import base64
import io
import json
import string

import numpy as np
import pytest
import torch
from fairseq.data.encoders.gpt2_bpe_utils import get_encoder
from PIL import Image

from conftest import tsv_rows
from ofa_el.data.caption_dataset import CAPTION_PROMPT, CaptionDataset
from ofa_el.data.caption_references import read_references
from ofa_el.data.ofa_dataset import decode_image, image_to_tensor
from ofa_el.data.refcoco_dataset import RefcocoDataset
from ofa_el.data.text import TextCodec, clean_references, clean_train_caption, pre_caption
from ofa_el.data.tsv import InvalidRowError
from ofa_el.errors import InvalidDataError

torch.set_num_threads(1)
P = 16  # small patches keep the tests fast


@pytest.fixture(scope="module")
def codec(demo_data):
    return TextCodec(str(demo_data / "bpe"), num_bins=100)


def image_b64(width=20, height=10, colour=(200, 10, 10), fmt="PNG", urlsafe=False):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format=fmt)
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(buffer.getvalue()).decode("ascii")


def write_tsv(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def caption_row(uid, caption, image=None):
    return (uid, "7", caption, "labels", image if image is not None else image_b64())


def refcoco_row(uid, text, region, image=None):
    return (uid, "7", text, region, image if image is not None else image_b64(40, 20))


# -- BPE -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [" a red circle at the top left", " what does the image describe?",
                                  " unseen wörds, 123 & émoji 🙂", "no leading space\tand a tab"])
def test_generated_bpe_round_trips_through_fairseq(codec, text):
    ids = codec.encode(text)
    assert codec.dictionary.unk() not in ids.tolist()
    assert codec.decode(ids) == text
    assert codec.bpe.decode(codec.bpe.encode(text)) == text


def test_generated_bpe_files_agree_with_the_tokenizers_library(demo_data):
    from tokenizers import ByteLevelBPETokenizer

    bpe_dir = demo_data / "bpe"
    reference = ByteLevelBPETokenizer(str(bpe_dir / "encoder.json"), str(bpe_dir / "vocab.bpe"), add_prefix_space=False)
    fairseq_encoder = get_encoder(str(bpe_dir / "encoder.json"), str(bpe_dir / "vocab.bpe"))
    text = " a small green square at the top right of the image"
    assert fairseq_encoder.encode(text) == reference.encode(text).ids
    assert len(fairseq_encoder.encode(" circle")) == 1  # frequent words became single tokens
    symbols = [int(line.split()[0]) for line in (bpe_dir / "dict.txt").read_text().splitlines()]
    assert sorted(symbols) == sorted(json.loads((bpe_dir / "encoder.json").read_text()).values())


def test_missing_bpe_file_is_named(tmp_path, demo_data):
    for name in ("encoder.json", "dict.txt"):
        (tmp_path / name).write_bytes((demo_data / "bpe" / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"--bpe-dir: missing .*vocab\.bpe"):
        TextCodec(str(tmp_path))


def test_decode_keeps_bin_tokens_verbatim(codec):
    ids = torch.cat([codec.encode(" box"), codec.encode_symbols("<bin_3> <bin_99>"), codec.encode(" end")])
    assert codec.decode(ids) == " box<bin_3><bin_99> end"


# -- text cleaning (OFA's rules: pre_caption in OFA's data/ofa_dataset.py) ---------------------------------

def test_caption_cleaning_rules():
    assert clean_train_caption("  A man's dog-walk, at 5.30 & more!  ", 30) == "A mans dogwalk at 530 more"
    assert clean_train_caption(" ".join(f"w{i}" for i in range(25)), 20) == " ".join(f"w{i}" for i in range(20))
    assert clean_references("a cat.&&  two\n dogs, here && x") == ["a cat", "two dogs here", "x"]
    long_ref = " ".join(["word"] * 40)
    assert clean_references(long_ref) == [long_ref]  # references are never truncated


def test_pre_caption_rules():
    assert pre_caption(",.Man-in  a/hat <person>.", 80) == "man in a hat person."
    assert pre_caption("one two three four", 2) == "one two"


# -- images ----------------------------------------------------------------------------------

def test_image_transform_on_a_solid_colour():
    colour = (200, 10, 128)
    tensor = image_to_tensor(decode_image(image_b64(30, 12, colour)), 8)
    assert tensor.shape == (3, 8, 8)
    expected = torch.tensor([c / 255.0 * 2 - 1 for c in colour]).view(3, 1, 1).expand(3, 8, 8)
    assert torch.allclose(tensor, expected, atol=1e-6)


def test_both_base64_alphabets_are_accepted():
    raw = image_b64(33, 17, (1, 2, 3), fmt="JPEG")
    urlsafe = raw.replace("+", "-").replace("/", "_")
    assert decode_image(raw).size == decode_image(urlsafe).size == (33, 17)


# -- caption samples -------------------------------------------------------------------------

def test_caption_train_sample_layout(tmp_path, codec):
    path = write_tsv(tmp_path / "train.tsv", [caption_row("u1", "A red, round circle!"), caption_row("u2", "x y z")])
    dataset = CaptionDataset(path, "train", codec, patch_image_size=P, max_tgt_length=2, slice_id=0, slice_count=1)
    sample = dataset[0]
    bos, eos = codec.dictionary.bos(), codec.dictionary.eos()
    assert sample["id"] == "u1"
    assert sample["source"].tolist() == [bos] + codec.encode(CAPTION_PROMPT).tolist() + [eos]
    words = codec.encode(" A red").tolist()  # punctuation stripped, 2 words kept, one leading space
    assert sample["target"].tolist() == words + [eos]
    assert sample["prev_output_tokens"].tolist() == [bos] + words
    assert sample["patch_image"].shape == (3, P, P) and sample["patch_mask"].tolist() == [True]
    assert "references" not in sample


def test_caption_valid_sample_keeps_all_references(tmp_path, codec):
    path = write_tsv(tmp_path / "val.tsv", [caption_row("9", "a red circle.&&the circle is red&&a round red shape")])
    sample = CaptionDataset(path, "valid", codec, patch_image_size=P, slice_id=0, slice_count=1)[0]
    assert sample["references"] == ["a red circle", "the circle is red", "a round red shape"]
    assert codec.decode(sample["target"]) == " a red circle&&the circle is red&&a round red shape"


def test_demo_files_load_with_the_ofa_column_selection(demo_data, codec):
    train_file = demo_data / "caption_stage1_train.tsv"
    train = CaptionDataset(str(train_file), "train", codec, patch_image_size=P, slice_id=0, slice_count=1)
    assert len(train) == tsv_rows(train_file) and all(train[i] is not None for i in range(len(train)))
    test = CaptionDataset(str(demo_data / "caption_test.tsv"), "test", codec, selected_cols="1,4,2",
                          patch_image_size=P, slice_id=0, slice_count=1)
    assert all(len(test[i]["references"]) == 5 for i in range(len(test)))


# -- collater --------------------------------------------------------------------------------

def test_collater_pads_right_and_counts_tokens(tmp_path, codec):
    captions = ["a", "a red circle at the top left of the image", "two shapes"]
    path = write_tsv(tmp_path / "train.tsv", [caption_row(f"u{i}", c) for i, c in enumerate(captions)])
    dataset = CaptionDataset(path, "train", codec, patch_image_size=P, slice_id=0, slice_count=1)
    samples = [dataset[i] for i in range(3)]
    batch = dataset.collater(samples)
    pad = codec.dictionary.pad()
    lengths = [len(s["target"]) for s in samples]
    assert batch["id"].tolist() == ["u0", "u1", "u2"] and batch["nsentences"] == 3
    assert batch["ntokens"] == sum(lengths)
    assert batch["target"].shape == batch["net_input"]["prev_output_tokens"].shape == (3, max(lengths))
    for row, sample in enumerate(samples):
        n = len(sample["target"])
        assert batch["target"][row, :n].tolist() == sample["target"].tolist()
        assert batch["net_input"]["prev_output_tokens"][row, :n].tolist() == sample["prev_output_tokens"].tolist()
        assert (batch["target"][row, n:] == pad).all() and (batch["net_input"]["prev_output_tokens"][row, n:] == pad).all()
    assert batch["net_input"]["src_lengths"].tolist() == [len(s["source"]) for s in samples]
    assert batch["net_input"]["patch_images"].shape == (3, 3, P, P)
    assert batch["net_input"]["patch_masks"].dtype == torch.bool and batch["net_input"]["patch_masks"].all()
    assert dataset.collater([]) == {} and dataset.collater([None]) == {}
    assert dataset.collater([None, samples[1]])["id"].tolist() == ["u1"]


def test_refcoco_batch_carries_ratios_and_raw_boxes(tmp_path, codec):
    rows = [refcoco_row("a", "the red one", "2,3,30.5,18"), refcoco_row("b", "left", "0,0,10,10", image_b64(20, 40))]
    dataset = RefcocoDataset(write_tsv(tmp_path / "r.tsv", rows), "valid", codec, patch_image_size=P, num_bins=100,
                             slice_id=0, slice_count=1)
    batch = dataset.collater([dataset[0], dataset[1]])
    assert torch.allclose(batch["w_resize_ratios"], torch.tensor([P / 40, P / 20]))
    assert torch.allclose(batch["h_resize_ratios"], torch.tensor([P / 20, P / 40]))
    assert batch["region_coords"].tolist() == [[2, 3, 30.5, 18], [0, 0, 10, 10]]
    assert batch["region_coords"].dtype == torch.float32
    # box / original side * 99 bins, rounded: (2/40, 3/20, 30.5/40, 18/20) -> 5, 15, 75, 89
    assert codec.decode(batch["target"][0]) == "<bin_5><bin_15><bin_75><bin_89>"
    assert batch["target"].shape == (2, 5)
    source = codec.decode(batch["net_input"]["src_tokens"][0])
    assert source == ' which region does the text " the red one " describe?'


# -- invalid rows ----------------------------------------------------------------------------

def truncated_jpeg():
    data = base64.b64decode(image_b64(64, 64, (10, 200, 10), fmt="JPEG"))
    return base64.b64encode(data[: len(data) // 2]).decode("ascii")


CAPTION_BAD_ROWS = [
    (caption_row("b", "fine", image="abc$def"), "invalid base64"),
    (caption_row("b", "fine", image=base64.b64encode(b"not an image").decode()), "undecodable or truncated image"),
    (caption_row("b", "fine", image=truncated_jpeg()), "undecodable or truncated image"),
    (caption_row("b", "fine", image=""), "empty image field"),
    (caption_row("b", " ?!. "), "caption column is empty"),
]


@pytest.mark.parametrize("bad_row,reason", CAPTION_BAD_ROWS)
def test_caption_bad_rows_name_file_and_row(tmp_path, codec, bad_row, reason):
    path = write_tsv(tmp_path / "t.tsv", [caption_row("ok", "fine"), bad_row])
    dataset = CaptionDataset(path, "train", codec, patch_image_size=P, slice_id=0, slice_count=1)
    with pytest.raises(InvalidRowError, match=reason) as info:
        dataset[1]
    assert (info.value.path, info.value.row) == (path, 2) and str(info.value).startswith(f"{path}: row 2: ")


def test_empty_reference_is_a_bad_row(tmp_path, codec):
    path = write_tsv(tmp_path / "v.tsv", [caption_row("1", "a cat&&&&a dog")])
    with pytest.raises(InvalidRowError, match=r"row 1: caption column: reference\(s\) \[2\] of 3 empty"):
        CaptionDataset(path, "valid", codec, patch_image_size=P, slice_id=0, slice_count=1)[0]


@pytest.mark.parametrize("region,reason", [
    ("1,2,3", "expected 4 comma-separated numbers"),
    ("1,2,a,4", "expected 4 numbers"),
    ("1,2,inf,4", "coordinates must be finite"),
    ("5,2,5,8", "x1 <= x0"),
    ("1,9,5,8", "y1 <= y0"),
    ("1,2,45,8", r"outside the 40x20 image by 5 px \(x1 = 45 > width 40\)"),
    ("-3,2,5,8", r"outside the 40x20 image by 3 px \(x0 = -3 < 0\)"),
    ("1,2,5,21.25", r"outside the 40x20 image by 1.25 px \(y1 = 21.25 > height 20\)"),
    ("40.25,2,40.75,8", "is empty once clipped to the 40x20 image"),
])
def test_refcoco_bad_regions(tmp_path, codec, region, reason):
    path = write_tsv(tmp_path / "r.tsv", [refcoco_row("a", "x", "1,1,4,4"), refcoco_row("b", "thing", region)])
    dataset = RefcocoDataset(path, "train", codec, patch_image_size=P, num_bins=100, slice_id=0, slice_count=1)
    assert dataset[0] is not None
    with pytest.raises(InvalidRowError, match=reason) as info:
        dataset[1]
    assert info.value.row == 2 and info.value.path == path


def test_refcoco_empty_expression(tmp_path, codec):
    path = write_tsv(tmp_path / "r.tsv", [refcoco_row("a", ",.!? ", "1,1,4,4")])
    with pytest.raises(InvalidRowError, match="row 1: text column is empty"):
        RefcocoDataset(path, "train", codec, patch_image_size=P, num_bins=100, slice_id=0, slice_count=1)[0]


def test_skip_invalid_rows_counts_and_collater_drops_them(tmp_path, codec):
    rows = [caption_row("0", "fine"), caption_row("1", "fine", image="%%"), ("2", "7", "only three"),
            caption_row("3", "fine too"), caption_row("4", "...")]
    path = write_tsv(tmp_path / "t.tsv", rows)
    dataset = CaptionDataset(path, "train", codec, patch_image_size=P, skip_invalid_rows=True, slice_id=0, slice_count=1)
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s is None for s in samples] == [False, True, True, False, True]
    assert dataset.num_skipped_rows == 3
    assert dataset.collater(samples)["id"].tolist() == ["0", "3"]
    dataset.reset_row_counts()
    assert dataset.num_skipped_rows == 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=1, collate_fn=dataset.collater)
    assert next(iter(loader))["nsentences"] == 2
    assert dataset.num_skipped_rows == 3  # counted in the worker, visible in the parent


def test_selected_cols_must_match_the_dataset(tmp_path, codec):
    path = write_tsv(tmp_path / "t.tsv", [caption_row("0", "fine")])
    with pytest.raises(ValueError, match=r"--selected-cols '0,4': CaptionDataset needs 3 columns"):
        CaptionDataset(path, "train", codec, selected_cols="0,4", patch_image_size=P, slice_id=0, slice_count=1)


def test_shuffled_order_is_a_seeded_permutation_per_epoch(tmp_path, codec):
    path = write_tsv(tmp_path / "t.tsv", [caption_row(str(i), "fine") for i in range(50)])
    dataset = CaptionDataset(path, "train", codec, patch_image_size=P, shuffle=True, seed=3, slice_id=0, slice_count=1)
    dataset.set_epoch(1)
    first = dataset.ordered_indices()
    dataset.set_epoch(2)
    second = dataset.ordered_indices()
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))
    assert first.tolist() != second.tolist() and first.tolist() != list(range(50))
    dataset.set_epoch(1)
    assert np.array_equal(dataset.ordered_indices(), first)
    unshuffled = CaptionDataset(path, "train", codec, patch_image_size=P, slice_id=0, slice_count=1)
    assert unshuffled.ordered_indices().tolist() == list(range(50))


def test_punctuation_is_python_string_punctuation():
    assert clean_train_caption(string.punctuation + " ok", 5) == "ok"


def test_fixed_size_batches_are_padded_to_the_same_count_on_every_rank(tmp_path, codec):
    path = write_tsv(tmp_path / "t.tsv", [caption_row(str(i), "fine") for i in range(5)])
    shards = [CaptionDataset(path, "train", codec, patch_image_size=P, slice_id=r, slice_count=2) for r in range(2)]
    first, second = (shard.batch_by_size(shard.ordered_indices(), max_sentences=2) for shard in shards)
    assert [b.tolist() for b in first] == [[0, 1], [2]]  # rows 1-3 of the file
    assert [b.tolist() for b in second] == [[0, 1], []]  # rows 4-5, then an empty batch
    assert shards[1].collater([shards[1][i] for i in second[1]]) == {}
    with pytest.raises(ValueError, match="--max-tokens is not supported"):
        shards[0].batch_by_size(shards[0].ordered_indices(), max_tokens=100, max_sentences=2)
    with pytest.raises(ValueError, match="--batch-size is required"):
        shards[0].batch_by_size(shards[0].ordered_indices())


def test_fairseq_epoch_iterator_runs_on_the_dataset(tmp_path, codec):
    from fairseq.data import iterators

    path = write_tsv(tmp_path / "t.tsv", [caption_row(str(i), f"caption {i}") for i in range(5)])
    dataset = CaptionDataset(path, "train", codec, patch_image_size=P, shuffle=True, slice_id=1, slice_count=2)
    batches = dataset.batch_by_size(dataset.ordered_indices(), max_sentences=2)
    epoch_itr = iterators.EpochBatchIterator(dataset, dataset.collater, batches, seed=1, epoch=1)
    seen = [batch for batch in epoch_itr.next_epoch_itr(shuffle=False)]
    assert [sorted(b["id"].tolist()) if b else [] for b in seen] == [["3", "4"], []]


# -- boxes a fraction of a pixel outside the image (COCO's float x,y,w,h) ------------------------

CLIPPED_REGION = "140.00,20.00,210.00,213.50"  # on a 320x213 image: y1 is half a pixel below the image


def grounding_dataset(tmp_path, codec, regions, **options):
    rows = [refcoco_row(f"r{i}", "the red one", region, image_b64(320, 213)) for i, region in enumerate(regions)]
    return RefcocoDataset(write_tsv(tmp_path / "r.tsv", rows), "train", codec, patch_image_size=P, num_bins=100,
                          slice_id=0, slice_count=1, **options)


def test_box_within_a_pixel_of_the_image_is_clipped_and_counted(tmp_path, codec):
    dataset = grounding_dataset(tmp_path, codec, [CLIPPED_REGION, "140,20,210,213", "-0.5,0,10,10"])
    clipped, inside, left = dataset[0], dataset[1], dataset[2]
    assert clipped["region_coord"].tolist() == [140.0, 20.0, 210.0, 213.0]
    assert clipped["target"].tolist() == inside["target"].tolist()  # quantised as the box inside the image
    assert codec.decode(clipped["target"]) == "<bin_43><bin_9><bin_65><bin_99>"
    assert left["region_coord"].tolist() == [0.0, 0.0, 10.0, 10.0]
    assert dataset.num_clipped_rows == 2 and dataset.num_skipped_rows == 0
    batch = dataset.collater([clipped, inside])
    assert batch["region_coords"][:, 3].tolist() == [213.0, 213.0]  # evaluation scores against the clipped box
    dataset.reset_row_counts()
    assert dataset.num_clipped_rows == 0


GROUNDING_BAD_REGIONS = [
    ("140,20,210,215", r"outside the 320x213 image by 2 px \(y1 = 215 > height 213\)"),
    ("210,20,140,213", "x1 <= x0"),
    ("140,20,210", "expected 4 comma-separated numbers"),
]


@pytest.mark.parametrize("region,reason", GROUNDING_BAD_REGIONS)
def test_box_beyond_a_pixel_inverted_or_malformed_is_invalid(tmp_path, codec, region, reason):
    dataset = grounding_dataset(tmp_path, codec, [CLIPPED_REGION, region])
    with pytest.raises(InvalidRowError, match=reason) as info:
        dataset[1]
    assert (info.value.path, info.value.row) == (dataset.tsv.path, 2)
    assert str(info.value).startswith(f"{dataset.tsv.path}: row 2: region column: ")
    assert dataset.num_clipped_rows == 0


def test_skipping_drops_bad_boxes_but_keeps_the_clipped_one(tmp_path, codec):
    regions = [CLIPPED_REGION] + [region for region, _ in GROUNDING_BAD_REGIONS] + ["1,2,3,4"]
    dataset = grounding_dataset(tmp_path, codec, regions, skip_invalid_rows=True)
    samples = [dataset[i] for i in range(len(dataset))]
    assert [sample is None for sample in samples] == [False, True, True, True, False]
    assert samples[0]["region_coord"].tolist() == [140.0, 20.0, 210.0, 213.0]
    assert (dataset.num_skipped_rows, dataset.num_clipped_rows) == (3, 1)


class _Rows:
    path = "f.tsv"

    @staticmethod
    def row_number(index):
        return index + 1

    def row_error(self, index, reason):
        return InvalidRowError(self.path, self.row_number(index), reason)


class _Parser:
    def __init__(self, error):
        self.error = error

    def parse(self, fields):
        raise self.error


@pytest.mark.parametrize("error, becomes", [(InvalidDataError("answers column is empty"), InvalidRowError),
                                            (ValueError("a bug in the parser"), ValueError)])
def test_only_the_parsers_data_errors_become_bad_rows(error, becomes):
    """A reason the parser raises as InvalidDataError names file and row (and may be skipped); any other
    ValueError from a parser is a bug and reaches the caller as it is, with its traceback."""
    dataset = CaptionDataset.__new__(CaptionDataset)
    dataset.parser, dataset.tsv = _Parser(error), _Rows()
    with pytest.raises(becomes) as raised:
        dataset.parse(1, {})
    assert type(raised.value) is becomes
    if becomes is InvalidRowError:
        assert str(raised.value) == "f.tsv: row 2: answers column is empty"


def test_the_references_reader_names_file_row_and_column_or_skips_like_the_dataset(tmp_path):
    path = tmp_path / "refs.tsv"
    path.write_text("1\tA red circle.&&a big circle\n2\ta circle&&...\n3\tA square!\n")
    with pytest.raises(InvalidRowError, match=r"refs\.tsv: row 2: caption column 1: reference\(s\) \[2\] of 2 empty"):
        list(read_references([str(path)], caption_column=1, id_column=0))
    kept = list(read_references([str(path)], caption_column=1, id_column=0, skip_invalid_rows=True))
    assert kept == [("1", ["A red circle", "a big circle"]), ("3", ["A square"])]  # cleaned: no punctuation
    assert [refs for _, refs in read_references([str(path)], 1, skip_invalid_rows=True)] == [refs for _, refs in kept]
    assert CaptionDataset.field_columns("1,4,2") == {"uniq_id": 1, "image": 4, "caption": 2}
    assert CaptionDataset.field_columns(None) == {"uniq_id": 0, "image": 4, "caption": 2}  # OFA's default, once
