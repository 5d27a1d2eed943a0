"""Checks made before any process starts: the files a command names, and what a save dir already holds.

A missing BPE folder or data file found by fairseq comes after the model is built (on 8 GPUs, after eight
``ofa_large`` builds) or after pages of config; these checks read only paths, a checkpoint's first bytes and
the config stored in a checkpoint, and raise a :class:`~ofa_el.errors.UserError` naming the file and
how to point at the right one.

A save dir whose ``checkpoint_last.pt`` exists is resumed by the training entry point. When that checkpoint
was trained with other hyper-parameters than the new command's, resuming would silently drop the new ones:
:func:`config_differences` lists them, so the launcher can stop and say so.
"""
from __future__ import annotations

import argparse
import os
import warnings
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .flags import DEFAULT_RESTORE, flag_given, flag_value, with_user_dir
from .errors import MissingFileError, UserError

#: What an OFA BPE folder holds (GPT-2's BPE and OFA's dictionary): OFA's repository has it as utils/BPE.
BPE_FILES = ("encoder.json", "vocab.bpe", "dict.txt")
#: The first bytes of a torch.save file: a zip archive (torch >= 1.6) or a pickle (the legacy format).
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")

#: Settings that legitimately differ between a first launch and its resume, or that change where and how a run
#: executes but not what it learns: the restore/reset flags apply to the first launch only (the training entry
#: point drops them on resume); paths of the plugin and the save dir, worker and logging settings; the device and
#: the process layout (every distributed_training setting), which may change between launches: the samples per
#: update that batch size, processes and update-freq give together are compared instead.
RESUME_INDEPENDENT = frozenset({
    "restore_file", "reset_optimizer", "reset_dataloader", "reset_meters", "reset_lr_scheduler",
    "finetune_from_model", "optimizer_overrides", "continue_once", "save_dir", "user_dir", "cpu", "update_freq",
    "num_workers", "log_interval", "log_format", "log_file", "tensorboard_logdir", "wandb_project",
    "azureml_logging", "aim_repo", "aim_run_hash", "no_progress_bar",
})
#: A section's ``_name`` is the flag that chose it.
SECTION_FLAGS = {"task": "task", "criterion": "criterion", "optimizer": "optimizer", "lr_scheduler": "lr_scheduler",
                 "model": "arch", "bpe": "bpe", "tokenizer": "tokenizer", "scoring": "scoring"}


def check_data_files(data: str, fix: str = "") -> None:
    """Every comma-separated TSV of the data argument exists."""
    for path in (p for p in data.split(",") if p):
        if not os.path.isfile(path):
            raise MissingFileError(f"data file not found: {path}{fix}")


def check_bpe_dir(bpe_dir: Optional[str], fix: str = "", named: Optional[str] = None) -> None:
    """``--bpe-dir`` is a folder with GPT-2's BPE files and OFA's dict.txt (``named``: how the message names it,
    ``--bpe-dir <folder>`` by default)."""
    if not bpe_dir:
        raise UserError(f"--bpe-dir: required (a folder with {', '.join(BPE_FILES)}: OFA's utils/BPE){fix}")
    named = named or f"--bpe-dir {bpe_dir}"
    if not os.path.isdir(bpe_dir):
        raise MissingFileError(f"{named}: no such folder (it holds {', '.join(BPE_FILES)}: OFA's utils/BPE){fix}")
    missing = [name for name in BPE_FILES if not os.path.isfile(os.path.join(bpe_dir, name))]
    if missing:
        raise MissingFileError(f"{named}: {', '.join(missing)} missing (the folder needs "
                               f"{', '.join(BPE_FILES)}: OFA's utils/BPE){fix}")


def check_checkpoint_file(path: str, flag: str, fix: str = "") -> None:
    """``path`` is a file that ``torch.load`` can read: there, not empty, not text, not a cut-off zip."""
    if not os.path.exists(path):
        raise MissingFileError(f"{flag} {path}: no such file{fix}")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: a folder, not a checkpoint file (e.g. {os.path.join(path, 'checkpoint_best.pt')})")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise UserError(f"{flag} {path}: empty file (0 bytes), not a checkpoint: an interrupted copy or save? "
                        "copy or save it again")
    if not head.startswith(CHECKPOINT_MAGIC):
        raise UserError(f"{flag} {path}: not a PyTorch checkpoint (it starts with {head!r}); give the .pt file "
                        "that fairseq or OFA saved")
    if head.startswith(CHECKPOINT_MAGIC[0]) and not zipfile.is_zipfile(path):
        raise UserError(f"{flag} {path}: a cut-off checkpoint (the zip archive has no end): an interrupted copy "
                        "or save? copy or save it again")


def check_save_dir(save_dir: str) -> None:
    """``--save-dir`` is a folder, or can be made as one (its nearest existing parent is a writable folder)."""
    if os.path.exists(save_dir):
        if not os.path.isdir(save_dir):
            raise UserError(f"--save-dir {save_dir}: a file, not a folder; choose another SAVE_DIR / --save-dir")
        if not os.access(save_dir, os.W_OK):
            raise UserError(f"--save-dir {save_dir}: not writable; choose another SAVE_DIR / --save-dir")
        return
    parent = os.path.dirname(os.path.abspath(save_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"--save-dir {save_dir}: cannot be created ({parent} is not a writable folder); choose "
                        "another SAVE_DIR / --save-dir")


def _flatten(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """A fairseq config (sections of settings; the model's a Namespace) as one ``setting -> value`` mapping."""
    flat: Dict[str, Any] = {}
    for section, values in cfg.items():
        if isinstance(values, argparse.Namespace):
            values = vars(values)
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            name = SECTION_FLAGS.get(section) if key == "_name" else key
            if name and not name.startswith("_"):
                flat.setdefault(name, value)
    return flat


def samples_per_update(cfg: Mapping[str, Any], processes: Optional[int] = None) -> Optional[int]:
    """Batch size x processes x update-freq of a fairseq config (``processes``: its world size when None)."""
    try:
        batch = cfg["dataset"]["batch_size"]
        world = processes or cfg["distributed_training"]["distributed_world_size"]
        update_freq = cfg["optimization"]["update_freq"]
        return int(batch) * int(world) * int(update_freq[0] if isinstance(update_freq, (list, tuple)) else update_freq)
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def config_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any],
                       processes: int) -> List[Tuple[str, Any, Any]]:
    """``(flag, stored value, wanted value)`` for every hyper-parameter the two training configs set differently
    (the settings in :data:`RESUME_INDEPENDENT` and the process layout left out)."""
    ignored = set(RESUME_INDEPENDENT) | set(stored.get("distributed_training") or {})
    old, new = _flatten(stored), _flatten(wanted)
    differences = [(f"--{name.replace('_', '-')}", old.get(name), new.get(name))
                   for name in sorted(set(old) | set(new))
                   if name not in ignored and old.get(name) != new.get(name)]
    old_samples, new_samples = samples_per_update(stored), samples_per_update(wanted, processes)
    if old_samples != new_samples:
        differences.append(("samples per update (batch x processes x update-freq)", old_samples, new_samples))
    return differences


def training_config(argv: List[str]) -> Dict[str, Any]:
    """The config fairseq-train builds from ``argv`` (this plugin's flags included), as checkpoints store it."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    args = options.parse_args_and_arch(options.get_training_parser(), input_args=with_user_dir(list(argv)))
    with warnings.catch_warnings():  # hydra's deprecation notes on fairseq's own config schema
        warnings.filterwarnings("ignore", message=r"(?is).*hydra")
        return OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True, enum_to_str=True)


def stored_training_config(path: str) -> Dict[str, Any]:
    """The training config stored in a checkpoint, read through the plugin's safe loader (the tensors are
    memory-mapped, not read)."""
    import torch
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    from .checkpoint_safety import guard_loader

    def read(checkpoint: str) -> Dict[str, Any]:
        return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(checkpoint))

    state = guard_loader(read)(path)
    if state.get("cfg") is not None:
        return dict(state["cfg"])
    if state.get("args") is not None:
        return OmegaConf.to_container(convert_namespace_to_omegaconf(state["args"]), resolve=True, enum_to_str=True)
    raise UserError(f"{path}: holds no training config (neither 'cfg' nor 'args'): not a fairseq checkpoint")


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 1:  # fairseq keeps --lr and --update-freq as lists
        value = value[0]
    return "(not set)" if value is None else str(value)


def check_resume(argv: List[str], processes: int) -> None:
    """Stop when the save dir's ``checkpoint_last.pt`` was trained with other hyper-parameters than ``argv``."""
    last = os.path.join(flag_value(argv, "--save-dir") or "checkpoints", DEFAULT_RESTORE)
    check_checkpoint_file(last, "--save-dir holds")
    differences = config_differences(stored_training_config(last), training_config(argv), processes)
    if differences:
        listed = "; ".join(f"{flag} {_shown(old)} -> {_shown(new)}" for flag, old, new in differences)
        raise UserError(f"{last} was trained with other hyper-parameters than this command, and training would "
                        f"resume from it with them ({listed}). Either train into a new save dir (SAVE_DIR=... or "
                        "--save-dir ...), or add --resume to continue that run with this command's settings")


def check_launch(entry: str, argv: List[str], processes: int = 1, resume: bool = False, demo: bool = False) -> None:
    """What a recipe's command needs before its first process starts (``argv``: the entry point's arguments)."""
    if argv and not argv[0].startswith("-"):
        check_data_files(argv[0], fix=" (the demo data: `make demo` writes it)" if demo else
                         " (DATA_DIR sets the data folder; OFA's TSV files: README.md, 'Data: OFA's TSV files')")
    check_bpe_dir(flag_value(argv, "--bpe-dir"), fix=" (BPE_DIR sets it)")
    if entry == "evaluate":
        check_checkpoint_file(flag_value(argv, "--path") or "", "--path", fix=" (CHECKPOINT sets it)")
        return
    save_dir = flag_value(argv, "--save-dir") or "checkpoints"
    check_save_dir(save_dir)
    if os.path.isfile(os.path.join(save_dir, DEFAULT_RESTORE)):
        if not resume:
            check_resume(argv, processes)
        return
    restore = flag_value(argv, "--restore-file")
    if restore and restore != DEFAULT_RESTORE and not flag_given(argv, "--finetune-from-model"):
        fix = " (RESTORE_FILE sets it)"
        if demo:
            fix += ("; the demo's start models are trained by the demo itself: `make demo` (caption, refcoco) "
                    "or `make demo-all` (also caption stage 2's short stage-1 model, refcoco+ and refcocog)")
        check_checkpoint_file(restore, "--restore-file", fix=fix)
