"""Try a trained caption, refcoco, vqa_gen, snli_ve or image_classify checkpoint on your own pictures.

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

An snli_ve checkpoint needs ``--text`` (the hypothesis; ``--caption``, the text premise, when it was
trained with ``--add-caption``) and prints yes, no or maybe (``photo.jpg: yes for "two dogs run"``).
An image_classify checkpoint prints the class name of each image (``photo.jpg: rugby ball``), chosen
among the classes of its ``--ans2label-file`` (``--ans2label-file`` here replaces that list). Both
score every candidate, as evaluation does.

Any image PIL reads works (JPEG, PNG, greyscale, RGBA, palette: converted to RGB as in training).
Generation uses evaluation's options and defaults (beam 5; caption: max-len-b 16, min-len 1;
boxes: exactly 4 tokens, restricted to bin tokens unless ``--unrestricted-decoding``).

The images are preprocessed by the task's own dataset, as ``tools/evaluate.py`` reads a TSV: each
image, decoded once, becomes one row held in memory (``--text`` as the expression, a placeholder
caption or box as the unused target), so the prompt, the image transform, the patch size from the
checkpoint's task config and the resize ratios that map bins back to pixels are the ones training
and evaluation use. A row the dataset rejects is reported as ``<predict input N: photo.jpg>: reason``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from PIL import Image, ImageDraw

from .. import claim_folder_name
from ..data.rows import MemoryRows
from ..inference import add_generation_options, generation_args, load_for_inference
from .errors import UserError, quiet_logs, run_cli

TASKS = ("caption", "refcoco", "vqa_gen", "snli_ve", "image_classify")
#: Tasks whose answer is one of a fixed set, predicted by scoring every candidate.
CANDIDATE_TASKS = ("snli_ve", "image_classify")
#: The caption column of a caption row; evaluation rows need a non-empty one, generation never reads it.
PLACEHOLDER_CAPTION = "unused"
#: The label column of an snli_ve row (a placeholder: predictions never read it).
PLACEHOLDER_LABEL = "entailment"
BOX_COLOUR = (255, 0, 0)


@dataclass
class InputImage:
    """An image file as the user named it, decoded."""

    path: str
    image: Image.Image
    result: Dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True, help="checkpoint file (caption or refcoco task)")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s), any format PIL reads")
    parser.add_argument("--text", default=None, help="refcoco: the referring expression; snli_ve: the hypothesis "
                                                     "(the same for every image)")
    parser.add_argument("--caption", default=None,
                        help="snli_ve trained with --add-caption: the text premise (the same for every image)")
    parser.add_argument("--ans2label-file", default=None,
                        help="image_classify: the class list (default: the checkpoint's --ans2label-file)")
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
    from ..data.ofa_dataset import image_from_bytes

    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"image not found: {path}")
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise UserError(f"cannot read image {path}: {err.strerror}") from None
        try:
            image = image_from_bytes(data)
        except ValueError as err:
            raise UserError(f"{path}: {err}") from None
        images.append(InputImage(path, image))
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
    if task_name == "snli_ve" and args.text is None:
        raise UserError("this checkpoint was trained for snli_ve: pass --text (the hypothesis)")
    if task_name in ("caption", "image_classify") and args.text is not None:
        raise UserError(f"--text: this checkpoint was trained for {task_name}, which describes the whole image "
                        "and takes no text")
    if task_name != "refcoco" and args.draw is not None:
        raise UserError(f"--draw: this checkpoint was trained for {task_name}; boxes come from refcoco checkpoints")
    if task_name != "refcoco" and args.unrestricted_decoding:
        raise UserError("--unrestricted-decoding: only for refcoco checkpoints")
    if task_name != "snli_ve" and args.caption is not None:
        raise UserError("--caption: only for snli_ve checkpoints (the text premise)")
    if task_name not in ("image_classify", "vqa_gen") and args.ans2label_file is not None:
        raise UserError("--ans2label-file: only for image_classify (the class list) and vqa_gen (the candidate "
                        "answers) checkpoints")
    if task_name == "vqa_gen" and args.question is None:
        raise UserError("this checkpoint was trained for vqa_gen: pass --question")
    if task_name != "vqa_gen" and (args.question is not None or args.inference_type is not None):
        raise UserError(f"--question/--inference-type: only for vqa_gen checkpoints; this one is {task_name}")
    if task_name == "vqa_gen" and (args.text is not None or args.draw is not None):
        raise UserError("--text/--draw: only for refcoco checkpoints; a vqa_gen checkpoint takes --question")


def expression_text(text: str, task_cfg, flag: str = "--text") -> str:
    """``--text`` as a TSV field (a field holds no tab or line break), checked to survive the dataset's cleaning."""
    from ..data.text import pre_caption

    one_line = " ".join(text.split())
    if not pre_caption(one_line, task_cfg.max_src_length):
        raise UserError(f"{flag} {text!r}: nothing is left after OFA's text cleaning")
    return one_line


def premise_text(caption: Optional[str], task_cfg) -> Optional[str]:
    """``--caption`` as a TSV field; required by an snli_ve checkpoint trained with ``--add-caption``."""
    if not task_cfg.get("add_caption", False):
        if caption is not None:
            raise UserError("--caption: this snli_ve checkpoint was trained without --add-caption; its prompt holds "
                            "the hypothesis only")
        return None
    if caption is None:
        raise UserError("this snli_ve checkpoint was trained with --add-caption: pass --caption (the text premise)")
    return expression_text(caption, task_cfg, "--caption")


def question_text(question: str, task_cfg) -> str:
    """``--question`` as a TSV field, checked to survive OFA's question cleaning."""
    from ..data.text import pre_question

    one_line = " ".join(question.split())
    if not pre_question(one_line, task_cfg.max_src_length).strip(" ?"):
        raise UserError(f"--question {question!r}: nothing is left after OFA's question cleaning")
    return one_line


def input_rows(task_name: str, images: Sequence[InputImage], text: Optional[str], caption: Optional[str] = None,
               placeholder_answer: Optional[str] = None) -> MemoryRows:
    """One row per image in the task's field order; the unused target is a placeholder the row checks accept
    (for refcoco a 1x1 box in the corner: inside any image, and within the bins whatever the image size; for
    vqa_gen and image_classify one of the checkpoint's candidates: image_classify's ids are row positions, the
    others' the first column)."""
    rows = []
    for index, item in enumerate(images):
        if task_name == "caption":
            rows.append((str(index), item.image, PLACEHOLDER_CAPTION))
        elif task_name == "vqa_gen":
            rows.append((str(index), item.image, text, f"1.0|!+{placeholder_answer}", ""))
        elif task_name == "snli_ve":
            rows.append((str(index), item.image, text, caption or PLACEHOLDER_CAPTION, PLACEHOLDER_LABEL))
        elif task_name == "image_classify":
            rows.append((item.image, placeholder_answer))
        else:
            rows.append((str(index), item.image, text, "0,0,1,1"))
    names = [f"<predict input {index}: {item.path}>" for index, item in enumerate(images, 1)]
    return MemoryRows(rows, names, path="<predict inputs>")


def image_batches(task, task_name: str, images: Sequence[InputImage], text_field: Optional[str], batch_size: int,
                  use_cuda: bool, caption_field: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """The images through the task's own dataset, collated as evaluation collates a TSV's rows."""
    from fairseq import utils

    candidates = getattr(task, "candidates", None)
    rows = input_rows(task_name, images, text_field, caption=caption_field,
                      placeholder_answer=candidates.answers[0] if candidates is not None else None)
    dataset = task.build_dataset(rows, "test")
    for sample in task.get_batch_iterator(dataset, max_sentences=batch_size).next_epoch_itr(shuffle=False):
        if sample:
            yield utils.move_to_cuda(sample) if use_cuda else sample


def predict(args: argparse.Namespace, task_name: str, model, task, images: List[InputImage], text_field: Optional[str],
            use_cuda: bool, caption_field: Optional[str] = None) -> None:
    """Fill each image's ``result``: its caption, its box in original-image pixels (None for a non-bin token), or
    its answer among the task's candidates (snli_ve: yes/no/maybe; image_classify: a class name)."""
    if task_name in CANDIDATE_TASKS:
        with torch.no_grad():
            for sample in image_batches(task, task_name, images, text_field, args.batch_size, use_cuda,
                                        caption_field):
                for index, answer in zip(sample["id"].tolist(), task.predict_answers(model, sample, "allcand")):
                    item = images[int(index)]
                    item.result = {"image": item.path, "answer": answer}
                    if task_name == "snli_ve":
                        item.result["text"] = args.text
        return
    if task_name == "refcoco":
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
    """The model in eval mode and its task, set up to read the rows of :func:`input_rows`."""
    task_cfg = state["cfg"].task
    overrides: Dict[str, Any] = {"skip_invalid_rows": False}
    if task_cfg._name == "refcoco":
        overrides["unrestricted_decoding"] = args.unrestricted_decoding
    if args.ans2label_file is not None:
        overrides["ans2label_file"] = args.ans2label_file
    model, _, task = load_for_inference(args.path, state, overrides, bpe_dir=args.bpe_dir, ema=args.ema_eval,
                                        use_cuda=use_cuda)
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
        if "question" in result:
            return f"{result['image']}: {result['answer']} for {json.dumps(result['question'])}"
        hypothesis = f" for {json.dumps(result['text'])}" if "text" in result else ""
        return f"{result['image']}: {result['answer']}{hypothesis}"
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
    text_field = expression_text(args.text, state["cfg"].task) if task_name in ("refcoco", "snli_ve") else \
        question_text(args.question, state["cfg"].task) if task_name == "vqa_gen" else None
    caption_field = premise_text(args.caption, state["cfg"].task) if task_name == "snli_ve" else None
    use_cuda = torch.cuda.is_available() and not args.cpu
    model, task = load_model(args, state, use_cuda)

    predict(args, task_name, model, task, images, text_field, use_cuda, caption_field)
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
