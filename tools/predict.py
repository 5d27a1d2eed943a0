"""Try a trained caption, refcoco or vqa_gen checkpoint on your own pictures.

    python -m ofa_el.tools.predict --path caption_best.pt --image photo.jpg [photo2.png ...]
    python -m ofa_el.tools.predict --path refcoco_best.pt --image photo.jpg --text "the man on the left" \
        [--draw boxed.png]
    python -m ofa_el.tools.predict --path vqa_best.pt --image photo.jpg --question "what colour is the bus?"

A caption checkpoint prints one caption per image (``photo.jpg: a man riding a horse``). A grounding
(refcoco) checkpoint needs ``--text`` and prints the box as ``x0,y0,x1,y1`` in pixels of the original
image (``photo.jpg: 12.3,45.6,200.1,300.0 for "the man on the left"``); ``--json`` prints a JSON list
instead. A VQA (vqa_gen) checkpoint needs ``--question`` and prints the answer
(``photo.jpg: red for "what colour is the bus?"``), chosen among its candidate answers by scoring every
one (``--inference-type allcand``, the default) or by trie-constrained beam search; ``--ema-eval`` answers
with the checkpoint's EMA weights.
``--draw`` writes the image with the box outlined in red: a file name for one image; for
several, an existing folder (``<folder>/<image stem>.png``) or a name holding ``{stem}``
(``boxes/{stem}_box.jpg``).

Any image PIL reads works (JPEG, PNG, greyscale, RGBA, palette: converted to RGB as in training).
Generation uses evaluation's options and defaults (beam 5; caption: max-len-b 16, min-len 1;
boxes: exactly 4 tokens, restricted to bin tokens unless ``--unrestricted-decoding``).

The images are preprocessed by the task's own dataset, exactly as ``tools/evaluate.py`` reads a
TSV: each image becomes one row of a temporary TSV file (the image base64-encoded, ``--text`` as
the expression, a placeholder caption or box as the unused target), so the prompt, the image
transform, the patch size from the checkpoint's task config and the resize ratios that map bins
back to pixels are the ones training and evaluation use.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from PIL import Image, ImageDraw

from .. import claim_folder_name
from .errors import UserError, quiet_logs, run_cli
from .evaluate import add_generation_options, generation_args

TASKS = ("caption", "refcoco", "vqa_gen")
#: The caption column of a caption row; evaluation rows need a non-empty one, generation never reads it.
PLACEHOLDER_CAPTION = "unused"
#: The column layout of the temporary TSV: the tasks' own field order.
SELECTED_COLS = {"caption": "0,1,2", "refcoco": "0,1,2,3", "vqa_gen": "0,1,2,3,4"}
BOX_COLOUR = (255, 0, 0)


@dataclass
class InputImage:
    """An image file as the user named it, checked readable, with its base64 TSV field."""

    path: str
    image: Image.Image
    field: str
    result: Dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True, help="checkpoint file (caption or refcoco task)")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s), any format PIL reads")
    parser.add_argument("--text", default=None, help="refcoco: the referring expression (the same for every image)")
    parser.add_argument("--draw", default=None,
                        help="refcoco: write the image with its box drawn: a file for one image; for several a "
                             "folder (<folder>/<stem>.png) or a name holding {stem}")
    parser.add_argument("--question", default=None, help="vqa_gen: the question (the same for every image)")
    parser.add_argument("--inference-type", choices=("allcand", "beamsearch"), default=None,
                        help="vqa_gen: score every candidate answer (default with a candidate set) or beam search")
    parser.add_argument("--ema-eval", action="store_true", help="use the checkpoint's EMA weights (--store-ema)")
    parser.add_argument("--bpe-dir", default=None, help="default: the --bpe-dir the checkpoint was trained with")
    add_generation_options(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of one line per image")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.beam < 1:
        parser.error("--batch-size and --beam must be at least 1")
    return args


def read_images(paths: Sequence[str]) -> List[InputImage]:
    """Every image read and decoded up front, so that a bad file stops the run before the model loads."""
    from ..data.ofa_dataset import decode_image

    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"image not found: {path}")
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise UserError(f"cannot read image {path}: {err.strerror}") from None
        field_text = base64.b64encode(data).decode("ascii")
        try:
            image = decode_image(field_text)
        except ValueError as err:
            raise UserError(f"{path}: {err}") from None
        images.append(InputImage(path, image, field_text))
    return images


def draw_targets(draw: str, images: Sequence[InputImage]) -> List[Path]:
    """Where each image with its box goes; checked before any work is done."""
    if len(images) > 1 and "{stem}" not in draw and not os.path.isdir(draw):
        raise UserError(f"--draw {draw}: with {len(images)} images give an existing folder or a file name "
                        "holding {stem} (e.g. boxes/{stem}_box.png)")
    targets = []
    for item in images:
        stem = Path(item.path).stem
        target = Path(draw) / f"{stem}.png" if os.path.isdir(draw) else Path(draw.replace("{stem}", stem))
        if target.suffix.lower() not in Image.registered_extensions():
            raise UserError(f"--draw {draw}: {target.name} has no image extension PIL can write (use .png or .jpg)")
        targets.append(target)
    repeated = sorted({str(t) for t in targets if targets.count(t) > 1})
    if repeated:
        raise UserError(f"--draw {draw}: several images would be written to {repeated[0]} (images with the same "
                        "file name: use a separate run or rename them)")
    return targets


def load_checkpoint_state(path: str) -> Dict[str, Any]:
    """The checkpoint's state (weights-only, as the plugin loads every checkpoint) with its task config."""
    from fairseq import checkpoint_utils

    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except (EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    cfg = state.get("cfg")
    task_name = cfg.task.get("_name") if cfg is not None and cfg.get("task") is not None else None
    if task_name not in TASKS:
        raise UserError(f"{path} was trained with task {task_name!r}; predict supports {', '.join(TASKS)} "
                        "checkpoints")
    return state


def check_options(args: argparse.Namespace, task_name: str) -> None:
    """Options that only make sense for one of the tasks."""
    if task_name == "refcoco" and args.text is None:
        raise UserError("this checkpoint was trained for refcoco: pass --text (the referring expression)")
    if task_name == "caption" and args.text is not None:
        raise UserError("--text: this checkpoint was trained for caption, which describes the whole image "
                        "and takes no text")
    if task_name == "caption" and args.draw is not None:
        raise UserError("--draw: this checkpoint was trained for caption; boxes come from refcoco checkpoints")
    if task_name == "caption" and args.unrestricted_decoding:
        raise UserError("--unrestricted-decoding: only for refcoco checkpoints")
    if task_name == "vqa_gen" and args.question is None:
        raise UserError("this checkpoint was trained for vqa_gen: pass --question")
    if task_name != "vqa_gen" and (args.question is not None or args.inference_type is not None):
        raise UserError(f"--question/--inference-type: only for vqa_gen checkpoints; this one is {task_name}")
    if task_name == "vqa_gen" and (args.text is not None or args.draw is not None):
        raise UserError("--text/--draw: only for refcoco checkpoints; a vqa_gen checkpoint takes --question")


def expression_text(text: str, task_cfg) -> str:
    """``--text`` as a TSV field (a field holds no tab or line break), checked to survive the dataset's cleaning."""
    from ..data.text import pre_caption

    one_line = " ".join(text.split())
    if not pre_caption(one_line, task_cfg.max_src_length):
        raise UserError(f"--text {text!r}: nothing is left after OFA's text cleaning")
    return one_line


def question_text(question: str, task_cfg) -> str:
    """``--question`` as a TSV field, checked to survive OFA's question cleaning."""
    from ..data.text import pre_question

    one_line = " ".join(question.split())
    if not pre_question(one_line, task_cfg.max_src_length).strip(" ?"):
        raise UserError(f"--question {question!r}: nothing is left after OFA's question cleaning")
    return one_line


def bpe_dir_for(args: argparse.Namespace, task_cfg) -> str:
    """``--bpe-dir``, else the checkpoint's own when that folder exists here."""
    if args.bpe_dir is not None:
        if not os.path.isdir(args.bpe_dir):
            raise UserError(f"--bpe-dir {args.bpe_dir}: no such directory")
        return args.bpe_dir
    saved = task_cfg.get("bpe_dir")
    if not saved or not os.path.isdir(saved):
        raise UserError(f"{args.path} was trained with --bpe-dir {saved}, which is not a directory here: pass "
                        "--bpe-dir DIR (encoder.json, vocab.bpe, dict.txt)")
    return saved


def apply_overrides(state: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """What fairseq's ``arg_overrides`` does when it reads the file; done here because the state is read once."""
    from fairseq.dataclass.utils import overwrite_args_by_name

    if state.get("args") is not None:
        for name, value in overrides.items():
            if hasattr(state["args"], name):  # a task's options only: the rest would be unknown to it
                setattr(state["args"], name, value)
    overwrite_args_by_name(state["cfg"], overrides)


def write_rows(tsv: Path, task_name: str, images: Sequence[InputImage], text: Optional[str],
               placeholder_answer: str = "yes") -> None:
    """One row per image in the task's field order; the unused target is a placeholder the row checks accept
    (for refcoco a 1x1 box in the corner: inside any image, and within the bins whatever the image size; for
    vqa_gen one of the checkpoint's candidate answers, with no object tags)."""
    with open(tsv, "w", encoding="utf-8", newline="\n") as out:
        for index, item in enumerate(images):
            if task_name == "caption":
                fields = [str(index), item.field, PLACEHOLDER_CAPTION]
            elif task_name == "vqa_gen":
                fields = [str(index), item.field, text, f"1.0|!+{placeholder_answer}", ""]
            else:
                fields = [str(index), item.field, text, "0,0,1,1"]
            out.write("\t".join(fields) + "\n")


def image_batches(task, task_name: str, images: Sequence[InputImage], text_field: Optional[str], batch_size: int,
                  use_cuda: bool) -> Iterator[Dict[str, Any]]:
    """The images as the task's dataset reads them from a TSV, collated as evaluation collates them; a row the
    dataset rejects is reported with its image file."""
    from fairseq import utils

    from ..data.tsv import InvalidRowError

    with tempfile.TemporaryDirectory(prefix="ofa_el_predict_") as folder:
        tsv = Path(folder) / "images.tsv"
        candidates = getattr(task, "candidates", None)
        write_rows(tsv, task_name, images, text_field, candidates.answers[0] if candidates else "yes")
        try:
            dataset = task.build_dataset(str(tsv), "test")
            for sample in task.get_batch_iterator(dataset, max_sentences=batch_size).next_epoch_itr(shuffle=False):
                if sample:
                    yield utils.move_to_cuda(sample) if use_cuda else sample
        except InvalidRowError as err:  # checked above already; name the image, not the temporary file
            raise UserError(f"{images[err.row - 1].path}: {err.reason}") from None


def predict(args: argparse.Namespace, task_name: str, model, task, images: List[InputImage], text_field: Optional[str],
            use_cuda: bool) -> None:
    """Fill each image's ``result``: its caption, or its box in original-image pixels (None for a non-bin token)."""
    if task_name == "refcoco":
        task.cfg.unrestricted_decoding = args.unrestricted_decoding
        generator, decoding_model = task.box_generator(model, generation_args(args, task_name))
    elif task_name == "vqa_gen":
        inference = args.inference_type or ("allcand" if task.candidates is not None else "beamsearch")
        generator = task.answer_generator(model, generation_args(args, task_name)) if inference == "beamsearch" \
            else None
    else:
        generator = task.build_generator([model], generation_args(args, task_name))
    for sample in image_batches(task, task_name, images, text_field, args.batch_size, use_cuda):
        rows = [images[int(index)] for index in sample["id"].tolist()]
        if task_name == "caption":
            for item, tokens in zip(rows, task.hypotheses(generator, model, sample)):
                item.result = {"image": item.path, "caption": task.caption_text(tokens)}
        elif task_name == "vqa_gen":
            with torch.no_grad():
                answers = task.predict_answers(model, sample, inference, generator)
            for item, answer in zip(rows, answers):
                item.result = {"image": item.path, "question": args.question, "answer": answer}
        else:
            for item, box in zip(rows, task.predicted_boxes(generator, decoding_model, sample).tolist()):
                found = all(math.isfinite(c) for c in box)
                item.result = {"image": item.path, "text": args.text, "box": box if found else None}


def load_model(args: argparse.Namespace, state: Dict[str, Any], use_cuda: bool):
    """The model in eval mode and its task, set up to read rows written by :func:`write_rows`."""
    from fairseq import checkpoint_utils

    task_cfg = state["cfg"].task
    apply_overrides(state, {"bpe_dir": bpe_dir_for(args, task_cfg), "selected_cols": SELECTED_COLS[task_cfg._name],
                            "skip_invalid_rows": False,
                            # validation-only set-up: CIDEr tables would read the training-time data files
                            "eval_cider": False, "eval_acc": False})
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([args.path], state=state)
    if args.ema_eval:
        ema = (state.get("extra_state") or {}).get("ema")
        if ema is None:
            raise UserError(f"--ema-eval: {args.path} holds no EMA weights (train with --store-ema)")
        models[0].load_state_dict(ema, strict=True)
    model = (models[0].cuda() if use_cuda else models[0]).eval()
    return model, task


def draw_box(image: Image.Image, box: Sequence[float], target: Path) -> None:
    """The image with a red outline on the box (inside the image, at least 2 px wide), saved to ``target``."""
    width, height = image.size
    xs = sorted(min(max(box[i], 0.0), width - 1.0) for i in (0, 2))
    ys = sorted(min(max(box[i], 0.0), height - 1.0) for i in (1, 3))
    drawn = image.copy()
    line = max(2, round(max(width, height) / 200))
    ImageDraw.Draw(drawn).rectangle([xs[0], ys[0], xs[1], ys[1]], outline=BOX_COLOUR, width=line)
    target.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(target)


def result_line(result: Dict[str, Any]) -> str:
    if "caption" in result:
        return f"{result['image']}: {result['caption']}"
    if "answer" in result:
        return f"{result['image']}: {result['answer']} for {json.dumps(result['question'])}"
    if result["box"] is None:
        return (f"{result['image']}: no box for {json.dumps(result['text'])} (the decoder emitted a non-bin token; "
                "drop --unrestricted-decoding)")
    coordinates = ",".join(f"{c:.1f}" for c in result["box"])
    return f"{result['image']}: {coordinates} for {json.dumps(result['text'])}"


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    # warnings only: the output is the predictions, not fairseq's loading log
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s | %(name)s | %(message)s", force=True)
    quiet_logs(logging.WARNING)
    args = parse_args(argv)
    claim_folder_name()  # the checkpoint's --user-dir names this folder
    if not os.path.isfile(args.path):
        raise UserError(f"checkpoint not found: {args.path}")
    images = read_images(args.image)
    state = load_checkpoint_state(args.path)
    task_name = state["cfg"].task._name
    check_options(args, task_name)
    targets = draw_targets(args.draw, images) if args.draw is not None else []
    text_field = expression_text(args.text, state["cfg"].task) if task_name == "refcoco" else \
        question_text(args.question, state["cfg"].task) if task_name == "vqa_gen" else None
    use_cuda = torch.cuda.is_available() and not args.cpu
    model, task = load_model(args, state, use_cuda)

    predict(args, task_name, model, task, images, text_field, use_cuda)
    results = [item.result for item in images]
    for item, target in zip(images, targets):
        if item.result["box"] is None:
            logging.getLogger("ofa_el.predict").warning("%s: no box to draw, %s not written", item.path, target)
        else:
            draw_box(item.image, item.result["box"], target)
    print(json.dumps(results, indent=1) if args.json else "\n".join(result_line(r) for r in results))
    return results


if __name__ == "__main__":
    run_cli(main)
