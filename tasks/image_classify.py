"""Task ``image_classify``: ImageNet-style classification, OFA's image_classify on the fixed-candidate base.

The decoder generates the class name after ``[bos]`` (prompt ``what does the image describe?``), constrained
by the trie over the class names of ``--ans2label-file`` (OFA's ``class2label_new.pkl``, or text with one
name per line). Validation scores every class for every image, the encoder run once per image and the
candidates ``--valid-batch-size`` at a time, and logs top-1 accuracy as ``score``.
"""
import logging
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..data.augment import AUGMENTATION_BACKENDS, TRAIN_AUGMENTATIONS
from ..data.image_classify_dataset import ImageClassifyDataset
from ..errors import OptionError
from .candidate_task import CandidateTask, CandidateTaskConfig

logger = logging.getLogger(__name__)


@dataclass
class ImageClassifyConfig(CandidateTaskConfig):
    imagenet_default_mean_and_std: bool = field(default=False, metadata={
        "help": "normalise with ImageNet's mean and std (OFA's ImageNet script) instead of mapping to [-1, 1]"})
    augmentation_backend: ChoiceEnum(list(AUGMENTATION_BACKENDS)) = field(default="auto", metadata={
        "help": "training augmentation: timm's create_transform (timm), this plugin's PIL implementation of the "
                "same policy (pil), or timm where it imports (auto)"})
    train_augmentation: ChoiceEnum(list(TRAIN_AUGMENTATIONS)) = field(default="ofa", metadata={
        "help": "training images: OFA's random augmentation (ofa), or resized as in evaluation (none: for a short "
                "run on small images, as the synthetic demo's, where its crops and erasing often lose the object)"})


@register_task("image_classify", dataclass=ImageClassifyConfig)
class ImageClassifyTask(CandidateTask):
    cfg: ImageClassifyConfig
    METRIC, METRIC_SUM, METRIC_COUNT, METRIC_DECIMALS = "score", "_score_sum", "_score_cnt", 3

    def answer_list(self):
        if not self.cfg.ans2label_file:
            raise OptionError("--ans2label-file: required for image_classify (the class names: OFA's "
                              "class2label_new.pkl, or a text file with one class name per line)")
        return super().answer_list()

    def build_dataset(self, path: str, split: str):
        return ImageClassifyDataset(path, split, self.codec, imagenet_default_mean_and_std=
                                    self.cfg.imagenet_default_mean_and_std,
                                    augmentation_backend=str(self.cfg.augmentation_backend),
                                    train_augmentation=str(self.cfg.train_augmentation),
                                    classes_source=self.cfg.ans2label_file, **self.dataset_options(split))
