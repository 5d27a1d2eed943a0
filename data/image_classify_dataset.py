"""Image classification rows (ImageNet-1k), read as OFA's image_classify task reads them
(OFA's data/cv_data/image_classify_dataset.py): an image and its class name, which the decoder generates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, FrozenSet, Sequence, Tuple

from PIL import Image

from .ofa_dataset import RowParser

#: OFA's image_classify defaults: ``--selected-cols`` (image, class name) and ``--patch-image-size``.
IMAGE_CLASSIFY_SELECTED_COLS = "0,2"
IMAGE_CLASSIFY_PATCH_IMAGE_SIZE = 480
#: The encoder text of every sample (GPT-2 BPE; note the leading space).
IMAGE_CLASSIFY_PROMPT = " what does the image describe?"


@dataclass
class ImageClassifyRow:
    """A checked classification row: the decoded image and its class name (one of the class list)."""

    image: Image.Image
    class_name: str


@dataclass
class ImageClassifyRowParser(RowParser):
    """The image_classify checks: image decodes; class name is one of ``classes`` (``--ans2label-file``), exactly
    as written there (OFA compares the predicted name to this column as a string, so a near miss never scores)."""

    FIELDS: ClassVar[Tuple[str, ...]] = ("image", "class_name")

    patch_image_size: int = IMAGE_CLASSIFY_PATCH_IMAGE_SIZE
    classes: Sequence[str] = ()
    #: Where the class list came from, for the error message.
    classes_source: str = "--ans2label-file"
    _class_set: FrozenSet[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if not self.classes:
            raise ValueError(f"{self.classes_source}: the class list is empty")
        self._class_set = frozenset(self.classes)

    def parse(self, fields: Dict[str, str]) -> ImageClassifyRow:
        name = fields["class_name"]
        if name not in self._class_set:
            hint = ""
            if name.strip() in self._class_set:
                hint = " (it is, without the surrounding whitespace)"
            raise ValueError(f"class column: {name!r} is not in the class list ({self.classes_source}, "
                             f"{len(self._class_set)} classes){hint}")
        return ImageClassifyRow(self.load_image(fields["image"]), name)
