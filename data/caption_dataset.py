"""COCO captioning samples, preprocessed as OFA's caption task does (spec §2.2)."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Union

from .ofa_dataset import OFADataset, image_to_tensor
from .text import TextCodec, clean_references, clean_train_caption

#: The encoder text for every caption sample (GPT-2 BPE; note the leading space).
CAPTION_PROMPT = " what does the image describe?"
#: Separator of the references in the caption column of valid/test files.
REFERENCE_SEPARATOR = "&&"


class CaptionDataset(OFADataset):
    """Rows ``(uniq-id, image, caption)``; the caption column holds ``&&``-joined references
    outside the train split.

    Train targets are the cleaned caption cut to ``max_tgt_length`` words. Evaluation targets
    are all cleaned references re-joined by ``&&`` (what OFA's validation loss is computed
    on); the references themselves are also kept in the sample (``references``) for CIDEr.
    """

    FIELDS = ("uniq_id", "image", "caption")

    def __init__(self, path: str, split: str, codec: TextCodec, selected_cols: Union[str, Sequence[int]] = "0,4,2",
                 patch_image_size: int = 480, max_tgt_length: int = 30, **kwargs):
        super().__init__(path, split, codec, selected_cols, patch_image_size, **kwargs)
        if max_tgt_length < 1:
            raise ValueError(f"--max-tgt-length must be positive, got {max_tgt_length}")
        self.max_tgt_length = max_tgt_length
        self.source = self.encode_source(CAPTION_PROMPT)

    def build_sample(self, index: int, fields: Dict[str, str]) -> Dict[str, Any]:
        image = image_to_tensor(self.load_image(index, fields["image"]), self.patch_image_size)
        if self.split == "train":
            target_text = clean_train_caption(fields["caption"], self.max_tgt_length)
            if not target_text:
                raise self.row_error(index, f"caption column is empty after cleaning: {fields['caption']!r}")
            references = None
        else:
            references = clean_references(fields["caption"])
            empty = [k + 1 for k, ref in enumerate(references) if not ref]
            if empty:
                raise self.row_error(
                    index, f"caption column: reference(s) {empty} of {len(references)} empty after cleaning")
            target_text = REFERENCE_SEPARATOR.join(references)
        sample = self.base_sample(fields["uniq_id"], image, self.source, self.codec.encode(" " + target_text))
        if references is not None:
            sample["references"] = references
        return sample
