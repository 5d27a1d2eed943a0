"""SNLI-VE (visual entailment) rows, read as OFA's snli_ve task reads them (OFA's data/mm_data/snli_ve_dataset.py).

A row holds an image (the premise), a hypothesis and the premise's text caption; the answer is
whether the image entails the hypothesis (``yes``), contradicts it (``no``) or neither (``maybe``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Sequence, Tuple, Union

from PIL import Image

from ..errors import InvalidDataError, OptionError
from .candidate_dataset import CandidateDataset
from .ofa_dataset import RowParser, image_to_tensor
from .text import TextCodec, pre_caption

#: OFA's snli_ve defaults: ``--selected-cols`` (uniq-id, image, hypothesis, caption, label), ``--patch-image-size``.
SNLI_VE_SELECTED_COLS = "0,2,3,4,5"
SNLI_VE_PATCH_IMAGE_SIZE = 480
#: SNLI's labels -> OFA's answers.
SNLI_VE_ANSWERS: Dict[str, str] = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
#: OFA's candidate answers, in its ``--ans2label-dict`` order (``{"no": 0, "yes": 1, "maybe": 2}``).
SNLI_VE_CANDIDATES: Tuple[str, ...] = ("no", "yes", "maybe")
#: Encoder texts (GPT-2 BPE; the leading space matters); the texts are cleaned with OFA's pre_caption.
SNLI_VE_PROMPT = ' does the image describe " {hypothesis} "?'
#: With ``--add-caption`` (both of OFA's scripts) the prompt states the text premise too.
SNLI_VE_CAPTION_PROMPT = ' can image and text1 " {caption} " imply text2 " {hypothesis} "?'


@dataclass
class SnliVeRow:
    """A checked SNLI-VE row: the image, the encoder prompt and OFA's answer (yes, no or maybe)."""

    uniq_id: str
    image: Image.Image
    prompt: str
    answer: str


@dataclass
class SnliVeRowParser(RowParser):
    """The snli_ve checks: image decodes, hypothesis (and with ``add_caption`` the caption) non-empty after
    OFA's cleaning, label one of entailment, contradiction, neutral (OFA raises on any other)."""

    FIELDS: ClassVar[Tuple[str, ...]] = ("uniq_id", "image", "hypothesis", "caption", "label")

    patch_image_size: int = SNLI_VE_PATCH_IMAGE_SIZE
    max_src_length: int = 80
    add_caption: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.max_src_length < 1:
            raise OptionError(f"--max-src-length must be positive, got {self.max_src_length}")

    def prompt(self, hypothesis: str, caption: str) -> str:
        """The encoder text of a row (raises ``InvalidDataError`` for a text that cleans to nothing)."""
        hypothesis_text = pre_caption(hypothesis, self.max_src_length)
        if not hypothesis_text:
            raise InvalidDataError(f"hypothesis column is empty after cleaning: {hypothesis!r}")
        if not self.add_caption:
            return SNLI_VE_PROMPT.format(hypothesis=hypothesis_text)
        caption_text = pre_caption(caption, self.max_src_length)
        if not caption_text:
            raise InvalidDataError(f"caption column is empty after cleaning (--add-caption puts it in the prompt): "
                                   f"{caption!r}")
        return SNLI_VE_CAPTION_PROMPT.format(caption=caption_text, hypothesis=hypothesis_text)

    def parse(self, fields: Dict[str, str]) -> SnliVeRow:
        label = fields["label"]
        if label not in SNLI_VE_ANSWERS:
            raise InvalidDataError(f"label column: {label!r} is not one of {', '.join(SNLI_VE_ANSWERS)}")
        prompt = self.prompt(fields["hypothesis"], fields["caption"])
        return SnliVeRow(fields["uniq_id"], self.load_image(fields["image"]), prompt, SNLI_VE_ANSWERS[label])


class SnliVeDataset(CandidateDataset):
    """Rows ``(uniq-id, image, hypothesis, caption, label)``; the target is OFA's answer after the
    ``--prompt-type`` decoder prompt, with its constraint mask over the candidates (yes, no, maybe)."""

    FIELDS = SnliVeRowParser.FIELDS
    SELECTED_COLS = SNLI_VE_SELECTED_COLS

    def __init__(self, path: str, split: str, codec: TextCodec,
                 selected_cols: Union[None, str, Sequence[int]] = None,
                 patch_image_size: int = SNLI_VE_PATCH_IMAGE_SIZE, max_src_length: int = 80, add_caption: bool = False,
                 **kwargs):
        parser = SnliVeRowParser(patch_image_size, max_src_length=max_src_length, add_caption=add_caption)
        super().__init__(path, split, codec, selected_cols, parser, **kwargs)

    def build_sample(self, index: int, fields: Dict[str, str]) -> Dict[str, Any]:
        row: SnliVeRow = self.parse(index, fields)
        if self.candidates is not None and row.answer not in self.candidates.index:
            raise self.row_error(index, f"label column: answer {row.answer!r} is not one of the candidates "
                                        f"({', '.join(self.candidates.answers)}; --ans2label-dict)")
        image = image_to_tensor(row.image, self.patch_image_size)
        return self.candidate_sample(row.uniq_id, image, self.encode_source(row.prompt),
                                     self.codec.encode(" " + row.answer), {row.answer: 1.0})
