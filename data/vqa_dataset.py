"""VQA samples, preprocessed as OFA's ``vqa_gen`` task does (OFA's data/mm_data/vqa_gen_dataset.py).

Rows (``--selected-cols 0,5,2,3,4`` of OFA's VQAv2 TSV): question id, image (base64), question, answers
as ``conf|!+answer&&conf|!+answer...``, object tags ``tag&&tag...``. The question is cleaned with OFA's
``pre_question`` (``--max-src-length`` words) and gets a ``?``; the encoder reads `` {question}`` and, with
``--add-object``, `` object: {first --max-object-length tags}``. The target is the highest-confidence answer
(the first of equals), cut to ``--max-tgt-length`` tokens; its confidence is the sample's ``conf``, which
weights its loss. ``ref_dict`` (answer -> confidence) scores the predicted answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import AbstractSet, Any, ClassVar, Dict, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from ..errors import InvalidDataError, OptionError
from .candidate_dataset import CandidateDataset
from .candidates import CandidateSet
from .ofa_dataset import RowParser, image_to_tensor
from .text import TextCodec, pre_question

#: OFA's VQA columns: question id, image, question, answers, object tags.
VQA_SELECTED_COLS = "0,5,2,3,4"
VQA_PATCH_IMAGE_SIZE = 480
#: Separators of the answers column: items by ``&&``, each item ``confidence|!+answer``.
ANSWER_SEPARATOR = "&&"
CONFIDENCE_SEPARATOR = "|!+"


@dataclass
class VqaRow:
    """A checked VQA row: the image, the cleaned question, its answers with confidences, the target."""

    question_id: int
    image: Image.Image
    question: str
    ref_dict: Dict[str, float]
    answer: str
    conf: float
    objects: Optional[str]


def parse_answers(field: str) -> Dict[str, float]:
    """``conf|!+answer&&...`` -> ``{answer: conf}`` (a repeated answer keeps its last confidence, as OFA)."""
    if not field.strip():
        raise InvalidDataError("answers column is empty")
    answers: Dict[str, float] = {}
    for number, item in enumerate(field.split(ANSWER_SEPARATOR), start=1):
        confidence, separator, answer = item.partition(CONFIDENCE_SEPARATOR)
        if not separator:
            raise InvalidDataError(f"answers column: item {number} {item!r} has no '{CONFIDENCE_SEPARATOR}' "
                                   "(expected confidence|!+answer)")
        try:
            value = float(confidence)
        except ValueError:
            raise InvalidDataError(f"answers column: item {number} {item!r}: confidence {confidence!r} is not a "
                                   "number") from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise InvalidDataError(f"answers column: item {number} {item!r}: confidence {value} is not in [0, 1]")
        if not answer.strip():
            raise InvalidDataError(f"answers column: item {number} {item!r} has an empty answer")
        answers[answer] = value
    return answers


@dataclass
class VqaRowParser(RowParser):
    """The VQA checks: integer question id, image decodes, question non-empty after cleaning, every answer item
    ``confidence|!+answer`` with a confidence in [0, 1], and (given ``answers``, the candidate set) the target
    answer among the candidates."""

    FIELDS: ClassVar[Tuple[str, ...]] = ("question_id", "image", "question", "answers", "objects")

    patch_image_size: int = VQA_PATCH_IMAGE_SIZE
    max_src_length: int = 128
    max_object_length: int = 30
    add_object: bool = False
    #: The candidate answers; None: any target answer (``--unconstrained-training``).
    answers: Optional[AbstractSet[str]] = None

    def __post_init__(self):
        super().__post_init__()
        for name in ("max_src_length", "max_object_length"):
            if getattr(self, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")

    def parse(self, fields: Dict[str, str]) -> VqaRow:
        try:
            question_id = int(fields["question_id"])
        except ValueError:
            raise InvalidDataError(f"question id column: {fields['question_id']!r} is not an integer") from None
        question = pre_question(fields["question"], self.max_src_length)
        if not question.strip(" ?"):
            raise InvalidDataError(f"question column is empty after cleaning: {fields['question']!r}")
        question = question if question.endswith("?") else question + "?"
        ref_dict = parse_answers(fields["answers"])
        answer = max(ref_dict, key=ref_dict.get)
        if self.answers is not None and answer not in self.answers:
            raise InvalidDataError(f"answers column: the target answer {answer!r} is not in the candidate answer list "
                                   "(--ans2label-file)")
        objects = None
        if self.add_object:  # as OFA: an empty tag field still adds " object: "
            objects = " ".join(fields["objects"].strip().split(ANSWER_SEPARATOR)[:self.max_object_length])
        image = self.load_image(fields["image"])
        return VqaRow(question_id, image, question, ref_dict, answer, ref_dict[answer], objects)


class VqaDataset(CandidateDataset):
    """Rows ``(question id, image, question, answers, objects)`` as OFA's VQA samples (see the module doc)."""

    FIELDS = VqaRowParser.FIELDS
    SELECTED_COLS = VQA_SELECTED_COLS

    def __init__(self, path: str, split: str, codec: TextCodec,
                 selected_cols: Union[None, str, Sequence[int]] = None,
                 patch_image_size: int = VQA_PATCH_IMAGE_SIZE, max_src_length: int = 128,
                 max_object_length: int = 30, max_tgt_length: int = 30, add_object: bool = False,
                 candidates: Optional[CandidateSet] = None, prompt_type: str = "none", **kwargs: Any):
        if max_tgt_length < 1:
            raise OptionError(f"--max-tgt-length must be positive, got {max_tgt_length}")
        parser = VqaRowParser(patch_image_size, max_src_length=max_src_length, max_object_length=max_object_length,
                              add_object=add_object, answers=frozenset(candidates.answers) if candidates else None)
        super().__init__(path, split, codec, selected_cols, parser, candidates=candidates, prompt_type=prompt_type,
                         **kwargs)
        self.max_tgt_length = max_tgt_length

    def build_sample(self, index: int, fields: Dict[str, str]) -> Dict[str, Any]:
        row: VqaRow = self.parse(index, fields)
        text = self.codec.encode(" " + row.question)
        if row.objects is not None:
            text = torch.cat([text, self.codec.encode(" object: " + row.objects)])
        source = self._wrap(text, bos=True, eos=True)
        answer = self.codec.encode(" " + row.answer)
        if len(answer) > self.max_tgt_length:
            if self.candidates is not None:  # a cut candidate would leave the trie: an infinite loss
                raise self.row_error(index, f"answers column: the target answer {row.answer!r} has {len(answer)} "
                                            f"tokens, more than --max-tgt-length {self.max_tgt_length}")
            answer = answer[:self.max_tgt_length]
        image = image_to_tensor(row.image, self.patch_image_size)
        sample = self.candidate_sample(row.question_id, image, source, answer, row.ref_dict)
        sample["conf"] = row.conf
        return sample
