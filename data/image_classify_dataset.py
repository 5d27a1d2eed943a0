"""Image classification rows (ImageNet-1k), read as OFA's image_classify task reads them
(OFA's data/cv_data/image_classify_dataset.py): an image and its class name, which the decoder generates.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, FrozenSet, Sequence, Tuple, Union

from PIL import Image

from ..errors import InvalidDataError, OptionError
from .augment import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, TRAIN_AUGMENTATIONS, build_train_transform,
                      eval_transform)
from .candidate_dataset import CandidateDataset
from .candidates import CandidateSet
from .ofa_dataset import IMAGE_MEAN, IMAGE_STD, RowParser
from .text import TextCodec

logger = logging.getLogger(__name__)

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
            raise InvalidDataError(f"{self.classes_source}: the class list is empty")
        self._class_set = frozenset(self.classes)

    def parse(self, fields: Dict[str, str]) -> ImageClassifyRow:
        name = fields["class_name"]
        if name not in self._class_set:
            hint = ""
            if name.strip() in self._class_set:
                hint = " (it is, without the surrounding whitespace)"
            raise InvalidDataError(f"class column: {name!r} is not in the class list ({self.classes_source}, "
                                   f"{len(self._class_set)} classes){hint}")
        return ImageClassifyRow(self.load_image(fields["image"]), name)


class ImageClassifyDataset(CandidateDataset):
    """Rows ``(image, class name)``; the target is the class name after ``[bos]``, masked by the class trie.

    Training images go through OFA's augmentation (:mod:`.augment`: timm's where it imports, else the same
    policy on PIL) unless ``train_augmentation`` is ``none``; other splits are only resized. Normalisation is OFA's [-1, 1] unless
    ``imagenet_default_mean_and_std`` (OFA's ImageNet script sets it). A sample's id is the row's 0-based
    position in the file: OFA's id on one process, and unlike OFA's (the index within a rank's shard) unique
    across ranks.
    """

    FIELDS = ImageClassifyRowParser.FIELDS
    SELECTED_COLS = IMAGE_CLASSIFY_SELECTED_COLS

    def __init__(self, path: str, split: str, codec: TextCodec, candidates: CandidateSet,
                 selected_cols: Union[None, str, Sequence[int]] = None,
                 patch_image_size: int = IMAGE_CLASSIFY_PATCH_IMAGE_SIZE, imagenet_default_mean_and_std: bool = False,
                 augmentation_backend: str = "auto", train_augmentation: str = "ofa",
                 classes_source: str = "--ans2label-file", **kwargs):
        if train_augmentation not in TRAIN_AUGMENTATIONS:
            raise OptionError(f"--train-augmentation {train_augmentation!r}: expected one of "
                             f"{', '.join(TRAIN_AUGMENTATIONS)}")
        parser = ImageClassifyRowParser(patch_image_size, classes=candidates.answers, classes_source=classes_source)
        super().__init__(path, split, codec, selected_cols, parser,
                         candidates=candidates, prompt_type="none", **kwargs)
        self.mean, self.std = ((IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if imagenet_default_mean_and_std
                               else (IMAGE_MEAN, IMAGE_STD))
        self.train_transform = None
        if split == "train" and train_augmentation == "ofa":
            self.train_transform = build_train_transform(patch_image_size, self.mean, self.std, augmentation_backend)
            logger.info("train split: OFA's random augmentation with %s", self.train_transform.backend)
        elif split == "train":
            logger.info("train split: no augmentation (--train-augmentation none): images resized as in evaluation")
        self.source = self.encode_source(IMAGE_CLASSIFY_PROMPT)

    def build_sample(self, index: int, fields: Dict[str, str]) -> Dict[str, Any]:
        row: ImageClassifyRow = self.parse(index, fields)
        if self.train_transform is not None:
            image = self.train_transform(row.image)
        else:
            image = eval_transform(row.image, self.patch_image_size, self.mean, self.std)
        return self.candidate_sample(self.tsv.row_number(index) - 1, image, self.source,
                                     self.candidates.tokens[self.candidates.index[row.class_name]],
                                     {row.class_name: 1.0})
