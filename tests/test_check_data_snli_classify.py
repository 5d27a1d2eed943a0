"""check_data for snli_ve and image_classify: every bad row listed as file:row: reason."""
import base64
import io

from PIL import Image

from conftest import run_command
from ofa_el.tools.check_data import main


def image_b64(width=24, height=16):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 30, 200)).save(buffer, format="JPEG")
    return base64.urlsafe_b64encode(buffer.getvalue()).decode("ascii")


NOT_AN_IMAGE = base64.b64encode(b"not an image").decode("ascii")


def write_lines(path, rows):
    path.write_bytes(b"".join(("\t".join(row) + "\n").encode("utf-8") for row in rows))
    return str(path)


def run(capsys, *argv):
    return run_command(capsys, main, *argv)


def snli(uid, hypothesis="a dog runs", caption="dogs on grass", label="entailment", image=None):
    return (uid, "img", image or image_b64(), hypothesis, caption, label)


def test_snli_ve_lists_every_bad_row(capsys, tmp_path):
    path = write_lines(tmp_path / "snli_ve_dev.tsv", [
        snli("1"), snli("2", label="neutral"), snli("3", label="contradiction"),
        snli("4", label="entails"), snli("5", hypothesis="?!"), snli("6", image=NOT_AN_IMAGE),
        snli("7", caption=""), snli("8")[:5],
    ])
    status, lines, err = run(capsys, "--task", "snli_ve", path)
    assert status == 1 and err == ""
    assert lines[:4] == [
        f"{path}:4: label column: 'entails' is not one of entailment, contradiction, neutral",
        f"{path}:5: hypothesis column is empty after cleaning: '?!'",
        f"{path}:6: image column: undecodable or truncated image (UnidentifiedImageError: not an image format PIL "
        "can read)",
        f"{path}:8: has 5 tab-separated columns, expected 6",
    ]
    assert lines[5].startswith(f"{path}: 8 rows: 4 ok, 4 bad, 0 clipped")
    status, lines, _ = run(capsys, "--task", "snli_ve", "--add-caption", path)
    assert f"{path}:7: caption column is empty after cleaning (--add-caption puts it in the prompt): ''" in lines


def test_image_classify_needs_the_class_list_and_lists_rows_outside_it(capsys, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("red circle\nblue square\n", encoding="utf-8")
    path = write_lines(tmp_path / "imagenet_1k_val.tsv", [
        (image_b64(), "1", "red circle"), (image_b64(), "3", "green circle"), (NOT_AN_IMAGE, "2", "blue square"),
        (image_b64(), "2", "blue square"),
    ])
    status, lines, err = run(capsys, "--task", "image_classify", "--ans2label-file", str(classes), path)
    assert status == 1 and err == ""
    assert lines[:2] == [
        f"{path}:2: class column: 'green circle' is not in the class list ({classes}, 2 classes)",
        f"{path}:3: image column: undecodable or truncated image (UnidentifiedImageError: not an image format PIL "
        "can read)",
    ]
    assert lines[3].startswith(f"{path}: 4 rows: 2 ok, 2 bad")
    try:
        main(["--task", "image_classify", path])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "--task image_classify needs --ans2label-file" in capsys.readouterr().err
