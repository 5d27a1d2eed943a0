"""Fixed candidate answer sets (VQA answers, SNLI-VE labels, ImageNet classes): the list, its trie, its masks.

OFA's tasks with a closed answer set read the candidates from a pickled ``{answer: label}`` dict
(``--ans2label-file``; only the keys and their order are used: candidate ``i`` is the ``i``-th key), put
every candidate's token sequence ``[bos] + BPE(" " + answer) + [eos]`` into a prefix trie, and restrict the
decoder at each answer position to the tokens the trie allows after the answer so far. Those restrictions
are the *constraint masks*: a boolean row over the vocabulary per target position. They serve training
(the loss is normalised over the allowed tokens), all-candidate scoring and constrained beam search.

:func:`load_answer_list` reads OFA's pickle through a restricted unpickler (nothing but plain data loads)
and also a plain text file (one answer per line) or a JSON list / dict, so no pickle is needed at all.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch

from ..errors import InvalidDataError, MissingFileError, OptionError
from .safe_pickle import load_restricted_pickle
from .text import TextCodec

#: File name endings read as a pickle (OFA's ``trainval_ans2label.pkl``, ``class2label_new.pkl``).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".p")


def load_answer_list(path: str, option: str = "--ans2label-file") -> List[str]:
    """The candidate answers of ``path``, in the file's order.

    * ``.pkl`` / ``.pickle`` / ``.p``: OFA's pickled ``{answer: label}`` dict (or a list of answers); the
      keys in their stored order. Any global other than plain containers, str and int is refused.
    * ``.json``: a list of answers, or an ``{answer: label}`` object (its keys, in file order).
    * anything else: text, one answer per line (a final newline is optional).

    Every answer must be a non-empty string without a line break, and appear once. Errors name ``option``
    and the file (and the line, for text files).
    """
    where = f"{option} {path}"
    if not os.path.isfile(path):
        raise MissingFileError(f"{option}: file not found: {path}")
    lower = path.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        loaded = load_restricted_pickle(path, option, "answer list", holds="a dict of answer strings to integer "
                                        "labels (or a list of strings)")
        return _answers_of(loaded, where)
    with open(path, encoding="utf-8") as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError as err:
            raise InvalidDataError(f"{where}: not UTF-8 text ({err})") from None
    if lower.endswith(".json"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidDataError(f"{where}: not valid JSON ({err})") from None
        return _answers_of(loaded, where)
    answers: List[str] = []
    first_line: Dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        answer = line.rstrip("\r")
        if not answer and number == text.count("\n") + 1:
            break  # the text after the final newline
        if not answer.strip():
            raise InvalidDataError(f"{path}: line {number}: empty answer")
        if answer in first_line:
            raise InvalidDataError(f"{path}: line {number}: answer {answer!r} repeats line {first_line[answer]}")
        first_line[answer] = number
        answers.append(answer)
    if not answers:
        raise InvalidDataError(f"{where}: no answers")
    return answers


def _answers_of(loaded, where: str) -> List[str]:
    """The answers of a loaded pickle / JSON value: a dict's keys (labels must be ints) or a list's items."""
    if isinstance(loaded, Mapping):
        bad_labels = [(k, v) for k, v in loaded.items() if not isinstance(v, int) or isinstance(v, bool)]
        if bad_labels:
            raise InvalidDataError(f"{where}: labels must be integers, got {bad_labels[0][1]!r} for "
                                   f"{bad_labels[0][0]!r}")
        answers = list(loaded.keys())
    elif isinstance(loaded, (list, tuple)):
        answers = list(loaded)
    else:
        raise InvalidDataError(f"{where}: expected a dict {{answer: label}} or a list of answers, "
                               f"got {type(loaded).__name__}")
    if not answers:
        raise InvalidDataError(f"{where}: no answers")
    seen = set()
    for index, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip() or "\n" in answer:
            raise InvalidDataError(f"{where}: answer {index} is not a non-empty one-line string: {answer!r}")
        if answer in seen:
            raise InvalidDataError(f"{where}: answer {answer!r} appears twice")
        seen.add(answer)
    return answers


def parse_answer_dict(value: str, option: str = "--ans2label-dict") -> List[str]:
    """An inline JSON ``{answer: label}`` object (OFA's ``--ans2label-dict``): its keys, in order."""
    try:
        loaded = json.loads(value)
    except json.JSONDecodeError as err:
        raise OptionError(f"{option}: not valid JSON ({err}): {value!r}") from None
    return _answers_of(loaded, option)


class CandidateTrie:
    """A prefix tree over token sequences; ``allowed(prefix)`` lists the tokens that may follow ``prefix``.

    As OFA's ``utils/trie.py``: a prefix the trie does not hold allows only ``eos`` (so an answer outside
    the candidate set ends there, and its next target token has probability 0).
    """

    def __init__(self, eos: int, sequences: Iterable[Sequence[int]] = ()):
        self.eos = eos
        self.root: Dict[int, dict] = {}
        for sequence in sequences:
            self.insert(sequence)

    def insert(self, sequence: Sequence[int]) -> None:
        node = self.root
        for token in sequence:
            node = node.setdefault(int(token), {})

    def allowed(self, prefix: Sequence[int]) -> List[int]:
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return [self.eos]
        return list(node.keys())


class CandidateSet:
    """The candidates of a task, tokenised as OFA does: ``answer`` -> ``BPE(" " + answer)``.

    Holds the answers (``answers[i]`` is candidate ``i``), their token tensors, the trie over
    ``[bos] + tokens + [eos]``, and builds constraint masks. Two answers with the same tokens are an error
    (all-candidate scoring could not tell them apart).
    """

    def __init__(self, answers: Sequence[str], codec: TextCodec, source: str = "the candidate list"):
        dictionary = codec.dictionary
        self.answers: List[str] = list(answers)
        self.index: Dict[str, int] = {answer: i for i, answer in enumerate(self.answers)}
        self.bos, self.eos, self.pad = dictionary.bos(), dictionary.eos(), dictionary.pad()
        self.vocab_size = len(dictionary)
        self.tokens: List[torch.LongTensor] = [codec.encode(" " + answer) for answer in self.answers]
        self.trie = CandidateTrie(self.eos)
        owner: Dict[tuple, int] = {}
        for i, tokens in enumerate(self.tokens):
            key = tuple(tokens.tolist())
            if not key:
                raise InvalidDataError(f"{source}: answer {self.answers[i]!r} encodes to no tokens")
            if key in owner:
                raise InvalidDataError(f"{source}: answers {self.answers[owner[key]]!r} and {self.answers[i]!r} have "
                                       "the same tokens")
            owner[key] = i
            self.trie.insert((self.bos,) + key + (self.eos,))
        self._allowed_rows: Optional[List[List[List[int]]]] = None

    def __len__(self) -> int:
        return len(self.answers)

    def allowed_after(self, answer_prefix: Sequence[int]) -> List[int]:
        """Tokens allowed after ``[bos] + answer_prefix``."""
        return self.trie.allowed([self.bos, *answer_prefix])

    def answer_mask(self, tokens: Sequence[int]) -> torch.BoolTensor:
        """``[len(tokens) + 1, V]``: row ``t`` allows the tokens that follow ``[bos] + tokens[:t]`` in the trie
        (the last row: what follows the whole answer, ``eos`` for a complete candidate)."""
        tokens = [int(t) for t in tokens]
        mask = torch.zeros(len(tokens) + 1, self.vocab_size, dtype=torch.bool)
        for t in range(len(tokens) + 1):
            mask[t, self.allowed_after(tokens[:t])] = True
        return mask

    def target_mask(self, target_length: int, answer_tokens: Sequence[int]) -> torch.BoolTensor:
        """The training mask of one sample whose target ends with ``answer_tokens + [eos]``:
        ``[target_length, V]``, the answer rows from :meth:`answer_mask`, the prompt rows before them
        all True (their targets are padding, never scored)."""
        answer_rows = self.answer_mask(answer_tokens)
        prompt_rows = target_length - answer_rows.size(0)
        if prompt_rows < 0:
            raise ValueError(f"a target of {target_length} tokens cannot end with an answer of "
                             f"{len(answer_tokens)} tokens and eos")
        return torch.cat([torch.ones(prompt_rows, self.vocab_size, dtype=torch.bool), answer_rows])

    def allowed_rows(self, index: int) -> List[List[int]]:
        """Candidate ``index``'s allowed tokens per answer position (cached: the masks of every chunk use them)."""
        if self._allowed_rows is None:
            self._allowed_rows = [[self.allowed_after(tokens[:t].tolist()) for t in range(len(tokens) + 1)]
                                  for tokens in self.tokens]
        return self._allowed_rows[index]
