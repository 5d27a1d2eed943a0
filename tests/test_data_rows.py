"""Rows held in memory read by a task's dataset exactly as the same rows read from a TSV file."""
import base64
import io

import pytest
import torch
from PIL import Image

from ofa_el.data import ofa_dataset
from ofa_el.data.refcoco_dataset import RefcocoDataset
from ofa_el.data.rows import InvalidInputError, MemoryRows
from ofa_el.data.text import TextCodec
from ofa_el.data.tsv import InvalidRowError
from ofa_el.synthetic.bpe import write_bpe

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    write_bpe(str(folder), ["the red square on the left", "a blue circle"], vocab_size=300)
    return TextCodec(str(folder), num_bins=100)


def png(width, height, colour):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def dataset(source, codec):
    return RefcocoDataset(source, "test", codec, selected_cols="0,4,2,3", patch_image_size=16, num_bins=100,
                          max_src_length=80, max_image_size=16)


def test_rows_in_memory_give_the_samples_a_file_gives(tmp_path, codec, monkeypatch):
    images = [png(40, 20, (200, 10, 10)), png(30, 60, (10, 10, 200))]
    lines = [("1", "7", "the Red square  on the left", "1,1,20,10", base64.b64encode(images[0]).decode()),
             ("2", "8", "a blue circle", "0,0,1,1", base64.b64encode(images[1]).decode())]
    tsv = tmp_path / "refcoco.tsv"
    tsv.write_text("".join("\t".join(line) + "\n" for line in lines))
    from_file = dataset(str(tsv), codec)
    expected = from_file.collater([from_file[0], from_file[1]])

    decoded = [ofa_dataset.image_from_bytes(data) for data in images]
    monkeypatch.setattr(ofa_dataset, "decode_image", lambda field: pytest.fail("an in-memory image decoded again"))
    rows = MemoryRows([(uid, image, text, region) for (uid, _, text, region, _), image in zip(lines, decoded)],
                      ["<input 1: a.png>", "<input 2: b.png>"])
    from_memory = dataset(rows, codec)

    assert len(from_memory) == len(from_file) == 2
    got = from_memory.collater([from_memory[0], from_memory[1]])
    for key in ("src_tokens", "patch_images", "patch_masks"):
        assert torch.equal(got["net_input"][key], expected["net_input"][key]), key
    for key in ("target", "w_resize_ratios", "h_resize_ratios", "region_coords"):
        assert torch.equal(got[key], expected[key]), key
    assert from_memory.batch_by_size([0, 1], max_sentences=1) == [[0], [1]]


def test_a_bad_row_in_memory_is_named_by_its_own_name(codec):
    image = ofa_dataset.image_from_bytes(png(40, 20, (200, 10, 10)))
    rows = MemoryRows([("1", image, "the red square", "1,1,20,10"), ("2", image, "the red square", "0,0,90,10")],
                      ["<predict input 1: a.png>", "<predict input 2: b.png>"])
    with pytest.raises(InvalidInputError) as caught:
        dataset(rows, codec)[1]
    assert isinstance(caught.value, InvalidRowError) and caught.value.row == 2
    assert str(caught.value).startswith("<predict input 2: b.png>: ") and "row" not in str(caught.value)
    with pytest.raises(ValueError, match="2 rows but 1 names"):
        MemoryRows(rows.rows, ["<one name>"])
