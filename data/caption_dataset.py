"""COCO captioning samples, preprocessed as OFA's caption task does (OFA's data/mm_data/caption_dataset.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image

from ..errors import InvalidDataError, OptionError
from .ofa_dataset import BASE_BATCH_EXTRAS, OFADataset, RowParser, image_to_tensor
from .caption_references import parse_references
from .text import TextCodec, clean_train_caption

#: The encoder text for every caption sample (GPT-2 BPE; note the leading space).
CAPTION_PROMPT = " what does the image describe?"
#: Separator of the references in the caption column of valid/test files.
REFERENCE_SEPARATOR = "&&"
#: OFA's caption defaults: ``--selected-cols`` (uniq-id, image, caption) and ``--patch-image-size``.
CAPTION_SELECTED_COLS = "0,4,2"
CAPTION_PATCH_IMAGE_SIZE = 480


@dataclass
class CaptionRow:
    """A checked caption row: the decoded image and the cleaned target text (and references outside train)."""

    uniq_id: str
    image: Image.Image
    target_text: str
    references: Optional[List[str]]


@dataclass
class CaptionRowParser(RowParser):
    """The caption checks: image decodes; the caption (train) or every ``&&``-joined reference
    (other splits, and stage-2 training rows: ``references=True``) is non-empty after OFA's cleaning."""

    FIELDS: ClassVar[Tuple[str, ...]] = ("uniq_id", "image", "caption")

    patch_image_size: int = CAPTION_PATCH_IMAGE_SIZE
    split: str = "train"
    max_tgt_length: int = 30
    #: Whether the caption column holds ``&&``-joined references; None: all splits but train do.
    references: Optional[bool] = None

    def __post_init__(self):
        super().__post_init__()
        if self.max_tgt_length < 1:
            raise OptionError(f"--max-tgt-length must be positive, got {self.max_tgt_length}")

    def parse(self, fields: Dict[str, str]) -> CaptionRow:
        image = self.load_image(fields["image"])
        holds_references = self.split != "train" if self.references is None else self.references
        if not holds_references:
            target_text = clean_train_caption(fields["caption"], self.max_tgt_length)
            if not target_text:
                raise InvalidDataError(f"caption column is empty after cleaning: {fields['caption']!r}")
            return CaptionRow(fields["uniq_id"], image, target_text, None)
        try:
            references = parse_references(fields["caption"])
        except InvalidDataError as err:
            raise InvalidDataError(f"caption column: {err}") from None
        return CaptionRow(fields["uniq_id"], image, REFERENCE_SEPARATOR.join(references), references)


class CaptionDataset(OFADataset):
    """Rows ``(uniq-id, image, caption)``; the caption column holds ``&&``-joined references
    outside the train split.

    Train targets are the cleaned caption cut to ``max_tgt_length`` words; ``references=True`` reads
    training rows as evaluation rows (caption stage 2: one row per image). Evaluation targets
    are all cleaned references re-joined by ``&&`` (what OFA's validation loss is computed
    on); the references themselves are also kept in the sample (``references``) for CIDEr.
    """

    FIELDS = CaptionRowParser.FIELDS
    SELECTED_COLS = CAPTION_SELECTED_COLS
    #: Evaluation splits keep their cleaned references for CIDEr.
    BATCH_EXTRAS = {**BASE_BATCH_EXTRAS, "references": "references"}

    def __init__(self, path: str, split: str, codec: TextCodec,
                 selected_cols: Union[None, str, Sequence[int]] = None,
                 patch_image_size: int = CAPTION_PATCH_IMAGE_SIZE, max_tgt_length: int = 30,
                 references: Optional[bool] = None, **kwargs):
        parser = CaptionRowParser(patch_image_size, split=split, max_tgt_length=max_tgt_length, references=references)
        super().__init__(path, split, codec, selected_cols, parser, **kwargs)
        self.max_tgt_length = max_tgt_length
        self.source = self.encode_source(CAPTION_PROMPT)

    def build_sample(self, index: int, fields: Dict[str, str]) -> Dict[str, Any]:
        row: CaptionRow = self.parse(index, fields)
        image = image_to_tensor(row.image, self.patch_image_size)
        sample = self.base_sample(row.uniq_id, image, self.source, self.codec.encode(" " + row.target_text))
        if row.references is not None:
            sample["references"] = row.references
        return sample
