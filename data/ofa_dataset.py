"""Base dataset shared by caption and refcoco: TSV rows -> OFA samples -> OFA batches.

Each task checks and decodes a row's selected fields with a :class:`RowParser`, which needs no
BPE, so that ``tools/check_data.py`` runs exactly the checks training runs; the subclass's
:meth:`OFADataset.build_sample` parses with it and then tokenises. Everything else (image
decoding and transform, token sequences, bad-row policy, batching, epoch-seeded shuffling)
lives here.
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
import multiprocessing
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidDataError, OptionError
from .text import TextCodec
from .rows import MemoryRows
from .tsv import InvalidRowError, TsvFile, parse_selected_cols

logger = logging.getLogger(__name__)

#: OFA normalises images to [-1, 1] (mean = std = 0.5 per channel).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
_MEAN_255 = torch.tensor(IMAGE_MEAN).view(3, 1, 1) * 255
_STD_255 = torch.tensor(IMAGE_STD).view(3, 1, 1) * 255

#: Errors PIL raises for bytes that are not a complete image of a known format.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
#: Per-sample keys the collater lays out itself; any other key is an extra (see :func:`collate`).
_CORE_KEYS = frozenset({"id", "source", "patch_image", "patch_mask", "target", "prev_output_tokens"})

#: Per-sample keys beyond the core ones, and their batch names, that every OFA dataset may emit: ``conf``, a
#: sample's confidence (OFA's VQA emits it), which the criteria read as ``sample["conf"]`` to weight its tokens.
BASE_BATCH_EXTRAS: Dict[str, str] = {"conf": "conf"}


def decode_base64(field: str) -> bytes:
    """Strict base64 decoding that accepts both the URL-safe and the standard alphabet.

    Raises :class:`~ofa_el.errors.InvalidDataError` for any character outside the alphabets or wrong padding, where
    Python's lenient decoder would silently drop characters.
    """
    try:
        return base64.b64decode(field.encode("ascii").translate(_STANDARD_ALPHABET), validate=True)
    except (UnicodeEncodeError, binascii.Error) as err:
        raise InvalidDataError(f"invalid base64 ({err})") from None


def decode_image(field: str) -> Image.Image:
    """A base64 image field to an RGB PIL image, fully decoded (:func:`image_from_bytes`)."""
    if not field:
        raise InvalidDataError("empty image field")
    return image_from_bytes(decode_base64(field))


def image_from_bytes(data: bytes) -> Image.Image:
    """An image file's bytes to an RGB PIL image, fully decoded.

    Unlike OFA (``LOAD_TRUNCATED_IMAGES = True``), truncated or corrupt images raise
    :class:`~ofa_el.errors.InvalidDataError` instead of being padded with grey pixels and trained on.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except _IMAGE_ERRORS as err:
        # PIL's message for an unknown format names the BytesIO object's address, which differs per run
        detail = "not an image format PIL can read" if isinstance(err, UnidentifiedImageError) else str(err)
        raise InvalidDataError(f"undecodable or truncated image ({type(err).__name__}: {detail})") from None


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Bicubic resize to ``size x size`` (aspect ratio not kept, as OFA) and normalise: ``[3, size, size]``."""
    resized = image.resize((size, size), Image.BICUBIC)
    pixels = torch.from_numpy(np.array(resized, dtype=np.float32).transpose(2, 0, 1).copy())
    return pixels.sub_(_MEAN_255).div_(_STD_255)  # == (pixels / 255 - mean) / std, in place


class RowCounter:
    """A number of rows this epoch (skipped as invalid, boxes clipped, ...), shared with forked or
    spawned DataLoader workers, so that the training process can log what the workers saw."""

    def __init__(self):
        self._count = multiprocessing.Value("q", 0)

    def increment(self) -> None:
        with self._count.get_lock():
            self._count.value += 1

    @property
    def value(self) -> int:
        return self._count.value

    def reset(self) -> None:
        with self._count.get_lock():
            self._count.value = 0


def selected_field_columns(selected_cols: Union[None, str, Sequence[int]], field_names: Sequence[str],
                           owner: str) -> Tuple[int, ...]:
    """``--selected-cols`` parsed, checked to name exactly one column per field of ``owner``."""
    columns = parse_selected_cols(selected_cols)
    if columns is None or len(columns) != len(field_names):
        raise OptionError(f"--selected-cols {selected_cols!r}: {owner} needs {len(field_names)} columns "
                          f"({', '.join(field_names)})")
    return columns


@dataclass
class RowParser:
    """Checks and decodes one row's named fields without a BPE; the one place a task's row checks live.

    :meth:`parse` raises :class:`~ofa_el.errors.InvalidDataError` with the reason (no file or row: the caller
    knows those).
    Subclasses set ``FIELDS`` and add their options; options are checked on construction, so
    training and ``check_data`` reject the same bad values.
    """

    #: Names of the selected fields, in ``--selected-cols`` order.
    FIELDS: ClassVar[Tuple[str, ...]] = ()

    patch_image_size: int

    def __post_init__(self):
        if self.patch_image_size < 1:
            raise OptionError(f"--patch-image-size must be positive, got {self.patch_image_size}")

    def parse(self, fields: Dict[str, str]) -> Any:
        """What ``build_sample`` needs from the row, or ``InvalidDataError(reason)``."""
        raise NotImplementedError

    @staticmethod
    def load_image(field: Union[str, Image.Image]) -> Image.Image:
        """The image column decoded in full (rows in memory may hold the decoded image); the reason names the
        column."""
        if isinstance(field, Image.Image):
            return field
        try:
            return decode_image(field)
        except InvalidDataError as err:
            raise InvalidDataError(f"image column: {err}") from None


class OFADataset(FairseqDataset):
    """Rows of one TSV file (this rank's shard) as OFA samples.

    Args:
        path: the TSV file, or rows in memory (:class:`~.rows.MemoryRows`, already in ``FIELDS`` order).
        split: ``"train"`` or an evaluation split name (subclasses clean text differently).
        codec: BPE + dictionary.
        selected_cols: ``--selected-cols``; must select exactly ``len(self.FIELDS)`` columns; None:
            :attr:`SELECTED_COLS`.
        parser: the task's row checks and options (its ``patch_image_size`` is the side P of
            the square model input).
        skip_invalid_rows: return None for a malformed row (the collater drops it) and count
            it, instead of raising :class:`InvalidRowError`.
        shuffle, seed: :meth:`ordered_indices` is a permutation seeded by ``(seed, epoch)``.
        slice_id, slice_count: this rank's shard of the file (default: torch.distributed).
    """

    #: Names of the selected fields, in ``--selected-cols`` order (the parser's).
    FIELDS: Tuple[str, ...] = ()
    #: OFA's ``--selected-cols`` for this task's files: the one definition of the default, used when none is given.
    SELECTED_COLS: ClassVar[str] = ""
    #: Per-sample keys beyond the core ones -> their names in the batch (see :func:`collate`).
    BATCH_EXTRAS: ClassVar[Dict[str, str]] = BASE_BATCH_EXTRAS

    def __init__(
        self,
        path: Union[str, MemoryRows],
        split: str,
        codec: TextCodec,
        selected_cols: Union[None, str, Sequence[int]],
        parser: RowParser,
        skip_invalid_rows: bool = False,
        shuffle: bool = False,
        seed: int = 1,
        slice_id: Optional[int] = None,
        slice_count: Optional[int] = None,
    ):
        if isinstance(path, MemoryRows):
            self.tsv = path
        else:
            columns = self.field_columns(selected_cols)
            self.tsv = TsvFile(path, tuple(columns.values()), slice_id=slice_id, slice_count=slice_count)
        self.parser = parser
        self.split = split
        self.codec = codec
        self.dictionary = codec.dictionary
        self.patch_image_size = parser.patch_image_size
        self.skip_invalid_rows = skip_invalid_rows
        self.skipped_rows = RowCounter()
        self.clipped_rows = RowCounter()
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1

    @classmethod
    def field_columns(cls, selected_cols: Union[None, str, Sequence[int]] = None) -> Dict[str, int]:
        """Each field's 0-based column: ``--selected-cols`` (or :attr:`SELECTED_COLS`) parsed and checked, once."""
        given = cls.SELECTED_COLS if selected_cols is None or selected_cols == "" else selected_cols
        return dict(zip(cls.FIELDS, selected_field_columns(given, cls.FIELDS, cls.__name__)))

    def __len__(self) -> int:
        return len(self.tsv)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        try:
            return self.build_sample(index, dict(zip(self.FIELDS, self.tsv[index])))
        except InvalidRowError as err:
            if not self.skip_invalid_rows:
                raise
            self.skipped_rows.increment()
            logger.warning("skipping invalid row: %s", err)
            return None

    def build_sample(self, index: int, fields: Dict[str, str]) -> Dict[str, Any]:
        """One sample from the named fields of row ``index``: :meth:`parse`, then tokenise."""
        raise NotImplementedError

    def parse(self, index: int, fields: Dict[str, str]) -> Any:
        """The parser's checked, decoded row; a malformed row raises :class:`InvalidRowError` with its file and row."""
        try:
            return self.parser.parse(fields)
        except InvalidDataError as err:
            raise self.row_error(index, str(err)) from None

    def row_error(self, index: int, reason: str) -> InvalidRowError:
        return self.tsv.row_error(index, reason)

    # -- pieces shared by the subclasses ---------------------------------------------------

    def encode_source(self, prompt: str) -> torch.LongTensor:
        """``[bos] + encode(prompt) + [eos]``."""
        return self._wrap(self.codec.encode(prompt), bos=True, eos=True)

    def target_pair(self, tokens: torch.LongTensor) -> Tuple[torch.LongTensor, torch.LongTensor]:
        """``(target, prev_output_tokens)`` = ``(tokens + [eos], [bos] + tokens)``: teacher forcing."""
        return self._wrap(tokens, bos=False, eos=True), self._wrap(tokens, bos=True, eos=False)

    def _wrap(self, tokens: torch.LongTensor, bos: bool, eos: bool) -> torch.LongTensor:
        parts = ([torch.LongTensor([self.dictionary.bos()])] if bos else []) + [tokens]
        parts += [torch.LongTensor([self.dictionary.eos()])] if eos else []
        return torch.cat(parts)

    def base_sample(self, uniq_id: str, image: torch.Tensor, source: torch.LongTensor,
                    target_tokens: torch.LongTensor) -> Dict[str, Any]:
        target, prev_output_tokens = self.target_pair(target_tokens)
        return {
            "id": uniq_id,
            "source": source,
            "patch_image": image,
            "patch_mask": torch.tensor([True]),
            "target": target,
            "prev_output_tokens": prev_output_tokens,
        }

    # -- per-epoch row counts ----------------------------------------------------------------

    @property
    def num_skipped_rows(self) -> int:
        """Invalid rows skipped since the last :meth:`reset_row_counts` (log it, then reset, each epoch)."""
        return self.skipped_rows.value

    @property
    def num_clipped_rows(self) -> int:
        """Rows used with their box clipped to the image since the last :meth:`reset_row_counts`."""
        return self.clipped_rows.value

    def reset_row_counts(self) -> None:
        self.skipped_rows.reset()
        self.clipped_rows.reset()

    # -- order and batching ------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def ordered_indices(self) -> np.ndarray:
        """File order, or (``shuffle=True``) a permutation that changes with the epoch."""
        if not self.shuffle:
            return np.arange(len(self), dtype=np.int64)
        with data_utils.numpy_seed(self.seed, self.epoch):
            return np.random.permutation(len(self)).astype(np.int64)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return not self.shuffle  # the order changes with the epoch

    def batch_by_size(self, indices: np.ndarray, max_tokens: Optional[int] = None,
                      max_sentences: Optional[int] = None, required_batch_size_multiple: int = 1) -> List[np.ndarray]:
        """OFA's batching: consecutive runs of ``max_sentences`` indices, padded with empty batches
        so that every rank of the sharded file runs the same number of steps.

        A row's token count is only known once its row is read, so ``--max-tokens`` cannot be
        honoured; ``required_batch_size_multiple`` only rounds token-based batches in fairseq
        and has nothing to act on here. Empty batches collate to ``{}``, which fairseq's
        trainer replaces by a zero-weighted dummy batch.
        """
        if max_tokens is not None:
            raise OptionError("--max-tokens is not supported: OFA datasets batch a fixed number of rows (--batch-size)")
        if not max_sentences or max_sentences < 1:
            raise OptionError("--batch-size is required: OFA datasets batch a fixed number of rows")
        batches = [indices[start:start + max_sentences] for start in range(0, len(indices), max_sentences)]
        largest_shard = -(-self.tsv.total_rows // self.tsv.slice_count)
        steps = -(-largest_shard // max_sentences)
        return batches + [np.zeros(0, dtype=np.int64)] * (steps - len(batches))

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """Right-padded OFA batch; rows skipped as invalid (None) are dropped; no rows -> ``{}``."""
        return collate(samples, self.dictionary.pad(), self.dictionary.eos(), self.BATCH_EXTRAS)


def collate(samples: List[Optional[Dict[str, Any]]], pad_idx: int, eos_idx: int,
            extras: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """OFA's batch layout (the ``collate`` of OFA's data/mm_data/*_dataset.py), with its batch names.

    ``extras`` maps each per-sample key beyond the core ones to the name the batch gives it
    (``{"w_resize_ratio": "w_resize_ratios", "conf": "conf"}``): tensors are stacked, numbers become
    a tensor, anything else (``references``) a list. A key that is not declared is an error rather
    than a batch key nobody reads under the name it got.
    """
    samples = [sample for sample in samples if sample is not None]
    if not samples:
        return {}
    extras = BASE_BATCH_EXTRAS if extras is None else extras

    def merge(key: str) -> torch.LongTensor:
        return data_utils.collate_tokens([s[key] for s in samples], pad_idx, eos_idx, left_pad=False)

    src_tokens = merge("source")
    target = merge("target")
    batch = {
        "id": np.array([s["id"] for s in samples]),
        "nsentences": len(samples),
        "ntokens": int(target.ne(pad_idx).sum().item()),
        "net_input": {
            "src_tokens": src_tokens,
            "src_lengths": src_tokens.ne(pad_idx).long().sum(dim=1),
            "patch_images": torch.stack([s["patch_image"] for s in samples]),
            "patch_masks": torch.cat([s["patch_mask"] for s in samples]),
            "prev_output_tokens": merge("prev_output_tokens"),
        },
        "target": target,
    }
    undeclared = sorted(samples[0].keys() - _CORE_KEYS - extras.keys())
    if undeclared:
        raise ValueError(f"sample keys {undeclared} have no batch name: declare them in the dataset's BATCH_EXTRAS "
                         f"(declared: {sorted(extras)})")
    for key in sorted(samples[0].keys() - _CORE_KEYS):
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[extras[key]] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            batch[extras[key]] = torch.tensor(values)
        else:
            batch[extras[key]] = values
    return batch
