"""VQAv2: questions + annotations JSON + COCO images -> ``vqa_<split>.tsv`` and ``trainval_ans2label.pkl``.

Columns (OFA's vqa_gen layout): question-id, image-id, question, answers, object tags (VinVL's, not in
these annotations: left empty), image. The answers column lists every distinct answer the annotators
gave with its VQA accuracy as ``conf|!+answer``, joined by ``&&``, best first. The accuracy is the
official VQA evaluation's: for an answer given by ``c`` of the ``n`` annotators (normally 10),
``min(1, matches / 3)`` averaged over the ``n`` leave-one-out subsets of ``n - 1`` annotators, i.e.
``(c * min(1, (c - 1) / 3) + (n - c) * min(1, c / 3)) / n`` (0.3, 0.6, 0.9, 1.0 for 1, 2, 3, 4+ of 10).
Answers are compared as written after whitespace collapsing (VQAv2's answers are already lowercased;
the evaluation script's punctuation, number-word and article rewriting is not applied).
``trainval_ans2label.pkl`` is ``{answer: index}`` of the ``--num-answers`` most frequent
``multiple_choice_answer`` values over all the given annotation files (ties by answer text).
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from collections import Counter
from typing import AbstractSet, Dict, Iterable, Iterator, List, Sequence, Tuple

from ..errors import InvalidDataError, OptionError
from .entries import (IMAGE, JOIN, Entry, InvalidEntry, Item, Row, format_number, group_by_first_appearance,
                      linked_annotation, load_json, one_line, require)
from .writer import Conversion, OutputFile

#: OFA's candidate answer count (trainval_ans2label.pkl).
NUM_ANSWERS = 3129
#: Separates an answer's confidence from the answer in the answers column.
CONFIDENCE_SEPARATOR = "|!+"
ANS2LABEL_NAME = "trainval_ans2label.pkl"


def soft_scores(answers: Sequence[str], candidates: AbstractSet[str] = frozenset()) -> List[Tuple[str, float]]:
    """``(answer, VQA accuracy)`` of every distinct answer among the annotators' ``answers``, best first
    (the leave-one-out form of the module docstring); among equal scores the ``candidates`` come first, then
    by answer text, so that the training target (the first best answer) is a candidate whenever it can be."""
    counts = Counter(answers)
    n = len(answers)

    def accuracy(count: int) -> float:
        return (count * min(1.0, (count - 1) / 3) + (n - count) * min(1.0, count / 3)) / n

    return ranked(((answer, accuracy(count)) for answer, count in counts.items()), candidates)


def ranked(scored: Iterable[Tuple[str, float]], candidates: AbstractSet[str] = frozenset()) -> List[Tuple[str, float]]:
    """``(answer, score)`` pairs best first; ties: candidates first, then by answer text."""
    return sorted(scored, key=lambda item: (-item[1], item[0] not in candidates, item[0]))


def answers_field(scored: Sequence[Tuple[str, float]]) -> str:
    """``conf|!+answer&&...``; ``InvalidDataError`` for no answers or an answer holding a separator."""
    if not scored:
        raise InvalidDataError("no answers")
    for answer, _ in scored:
        if not answer:
            raise InvalidDataError("an answer is empty")
        if JOIN in answer or CONFIDENCE_SEPARATOR in answer:
            raise InvalidDataError(f"answer {answer!r} contains {JOIN!r} or {CONFIDENCE_SEPARATOR!r}")
    return JOIN.join(f"{format_number(conf)}{CONFIDENCE_SEPARATOR}{answer}" for answer, conf in scored)


def vqa_row(key: str, question_id: str, image_id: str, question: str, scored: Sequence[Tuple[str, float]],
            candidates: AbstractSet[str], tags: str = "") -> Row:
    """A vqa_gen TSV row; ``InvalidDataError`` for an empty question, unusable answers, or a training target (the
    best answer) outside the ``candidates``, which the task could not train on."""
    question = one_line(question)
    if not question:
        raise InvalidDataError("the question is empty")
    if scored and scored[0][0] not in candidates:
        raise InvalidDataError(f"the best answer {scored[0][0]!r} is not one of the {len(candidates)} candidate "
                               f"answers ({ANS2LABEL_NAME})")
    return Row(key, (question_id, image_id, question, answers_field(scored), one_line(tags), IMAGE))


def split_name(questions: dict, path: str) -> str:
    """``data_subtype`` without its year: ``train2014`` -> ``train``."""
    subtype = questions.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise InvalidDataError(f"{path}: no data_subtype (train2014, val2014, ...) to name the split by")
    return re.sub(r"\d+$", "", subtype) or subtype


def image_path(images_dir: str, subtype: str, image_id: int) -> str:
    """COCO's ``COCO_<subtype>_<id:012d>.jpg``, in ``images_dir/<subtype>/`` if that folder exists."""
    name = f"COCO_{subtype}_{int(image_id):012d}.jpg"
    folder = os.path.join(images_dir, subtype)
    return os.path.join(folder if os.path.isdir(folder) else images_dir, name)


def split_items(path: str, images_dir: str, subtype: str, questions: List[dict],
                annotations: Dict[int, dict], candidates: AbstractSet[str]) -> Iterator[Item]:
    """One entry per image, in the order the questions first name it; one row per question."""
    def image_of(question) -> object:
        return question.get("image_id") if isinstance(question, dict) else None

    for image_id, image_questions in group_by_first_appearance(questions, image_of).items():
        entry = Entry(path, f"image {image_id}", image_path(images_dir, subtype, image_id or 0))
        for question in image_questions:
            key = f"question {question.get('question_id') if isinstance(question, dict) else '?'}"
            try:
                annotation = linked_annotation(question, ("question_id", "image_id", "question"), "question_id",
                                               annotations, "no annotation for this question in --annotations")
                given = [one_line(a.get("answer", "")) for a in annotation.get("answers") or () if isinstance(a, dict)]
                scored = soft_scores([a for a in given if a], candidates)
                entry.rows.append(vqa_row(key, str(question["question_id"]), str(image_id), question["question"],
                                          scored, candidates))
            except (ValueError, TypeError, AttributeError) as err:
                yield InvalidEntry(path, key, str(err))
        if entry.rows:
            yield entry


def ans2label(annotation_sets: Sequence[Sequence[dict]], num_answers: int) -> Dict[str, int]:
    """The ``num_answers`` most frequent ``multiple_choice_answer`` values, as ``{answer: index}``."""
    counts = Counter(one_line(a.get("multiple_choice_answer", "")) for annotations in annotation_sets
                     for a in annotations if isinstance(a, dict))
    counts.pop("", None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:num_answers]
    return {answer: index for index, (answer, _) in enumerate(ranked)}


def convert(args: argparse.Namespace) -> Conversion:
    if len(args.questions) != len(args.annotations):
        raise OptionError(f"--questions gives {len(args.questions)} file(s) and --annotations {len(args.annotations)}: "
                          "give one annotation file per question file, in the same order")
    if args.num_answers < 1:
        raise OptionError(f"--num-answers must be positive, got {args.num_answers}")
    splits, names = [], set()
    for questions_path, annotations_path in zip(args.questions, args.annotations):
        questions = load_json(questions_path, "--questions")
        require(questions, ("questions",), questions_path)
        annotations = load_json(annotations_path, "--annotations")
        require(annotations, ("annotations",), annotations_path)
        split = split_name(questions, questions_path)
        if split in names:
            raise InvalidDataError(f"{questions_path}: a second question file for split {split!r}")
        names.add(split)
        splits.append((split, questions_path, questions, annotations["annotations"]))
    labels = ans2label([annotations for *_, annotations in splits], args.num_answers)
    outputs = []
    for split, questions_path, questions, annotations in splits:
        by_question = {a["question_id"]: a for a in annotations if isinstance(a, dict) and "question_id" in a}
        items = split_items(questions_path, args.images, questions["data_subtype"], questions["questions"],
                            by_question, labels.keys())
        outputs.append(OutputFile(f"vqa_{split}.tsv", items, len(questions["questions"])))
    return Conversion(outputs, {ANS2LABEL_NAME: ans2label_pickle(labels)})


def ans2label_pickle(labels: Dict[str, int]) -> bytes:
    """OFA's ``trainval_ans2label.pkl``: the ``{answer: index}`` dict."""
    return pickle.dumps(labels, protocol=4)
