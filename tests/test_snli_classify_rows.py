"""SNLI-VE and image-classification row checks (the parsers training and check_data share)."""
import base64
import io

import pytest
from PIL import Image

from ofa_el.data.image_classify_dataset import ImageClassifyRowParser
from ofa_el.data.snli_ve_dataset import SNLI_VE_ANSWERS, SnliVeRowParser


def image_b64(width=20, height=10, urlsafe=False):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(buffer.getvalue()).decode("ascii")


def snli_fields(hypothesis="Two dogs run.", caption="A dog runs on grass", label="entailment", image=None):
    return {"uniq_id": "252244149.jpg#1r1n", "image": image or image_b64(), "hypothesis": hypothesis,
            "caption": caption, "label": label}


def test_snli_labels_map_to_ofa_answers():
    parser = SnliVeRowParser()
    answers = {label: parser.parse(snli_fields(label=label)).answer for label in SNLI_VE_ANSWERS}
    assert answers == {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}


def test_snli_prompts_are_ofas():
    row = SnliVeRowParser().parse(snli_fields(hypothesis="Two-dogs run/play."))
    assert row.prompt == ' does the image describe " two dogs run play. "?'  # OFA's pre_caption
    assert row.uniq_id == "252244149.jpg#1r1n" and row.image.size == (20, 10)
    with_caption = SnliVeRowParser(add_caption=True).parse(snli_fields())
    assert with_caption.prompt == ' can image and text1 " a dog runs on grass " imply text2 " two dogs run. "?'
    short = SnliVeRowParser(max_src_length=2).parse(snli_fields(hypothesis="one two three"))
    assert short.prompt == ' does the image describe " one two "?'


@pytest.mark.parametrize("fields, reason", [
    (snli_fields(label="Entailment"), "label column: 'Entailment' is not one of entailment, contradiction, neutral"),
    (snli_fields(label="yes"), "label column: 'yes' is not one of"),
    (snli_fields(label=""), "label column: '' is not one of"),
    (snli_fields(hypothesis="  "), "hypothesis column is empty after cleaning"),
    (snli_fields(image="bm90IGFuIGltYWdl"), "image column: undecodable or truncated image"),
])
def test_snli_bad_rows(fields, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        SnliVeRowParser().parse(fields)


def test_snli_empty_caption_is_an_error_only_when_it_is_used():
    assert SnliVeRowParser().parse(snli_fields(caption="")).answer == "yes"
    with pytest.raises(ValueError, match="caption column is empty after cleaning"):
        SnliVeRowParser(add_caption=True).parse(snli_fields(caption=""))
    with pytest.raises(ValueError, match="--max-src-length"):
        SnliVeRowParser(max_src_length=0)


def test_classify_row_needs_a_listed_class():
    parser = ImageClassifyRowParser(classes=["rugby ball", "tench, Tinca tinca"], classes_source="class2label.pkl")
    row = parser.parse({"image": image_b64(urlsafe=True), "class_name": "tench, Tinca tinca"})
    assert row.class_name == "tench, Tinca tinca" and row.image.mode == "RGB"
    with pytest.raises(ValueError, match=r"class column: 'golf ball' is not in the class list \(class2label.pkl, "
                                         r"2 classes\)$"):
        parser.parse({"image": image_b64(), "class_name": "golf ball"})
    with pytest.raises(ValueError, match="without the surrounding whitespace"):
        parser.parse({"image": image_b64(), "class_name": "rugby ball "})
    with pytest.raises(ValueError, match="image column"):
        parser.parse({"image": "", "class_name": "rugby ball"})
    with pytest.raises(ValueError, match="class list is empty"):
        ImageClassifyRowParser(classes=[])
