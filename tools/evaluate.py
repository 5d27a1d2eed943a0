"""Evaluate a caption, refcoco, vqa_gen, snli_ve or image_classify checkpoint on one or more splits: predictions to
JSON, metrics printed.

    python -m ofa_el.tools.evaluate A.tsv[,B.tsv,...] --path checkpoint_best.pt [--bpe-dir BPE] \
        --results-path results/caption [--beam 5 ...] [--metrics-json out.json]

The checkpoint's stored training and validation settings (its data files, CIDEr table, ``--eval-args``) are ignored,
with one log line; its BPE folder is used unless ``--bpe-dir`` names another.

Each file is a split named after it (``refcoco_testA.tsv`` -> ``refcoco_testA``), written to
``<results-path>/<split>_predict.json``. Caption writes ``[{"image_id", "caption"}]`` and reports
BLEU-4, METEOR, ROUGE-L and CIDEr (pycocoevalcap against the TSV's references; SPICE is skipped
because it needs downloads). Refcoco writes ``[{"uniq_id", "box"}]`` and reports Acc@0.5 and mean
IoU. vqa_gen writes ``[{"question_id", "answer"}]`` and reports the VQA score (``--inference-type
allcand|beamsearch``, ``--ema-eval`` for the EMA weights). SNLI-VE and image classification score every candidate
answer (yes/no/maybe; every class of ``--ans2label-file``), write ``[{"uniq_id", "answer"}]`` and report the
accuracy. A table of every split's metrics is printed at the end (and written by ``--metrics-json``).
A progress bar (items/s, elapsed time) goes to stderr. Caption metrics need ``java`` on PATH
(PTB tokenizer, METEOR): its absence is reported before any generation starts.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .. import claim_folder_name
from ..inference import add_generation_options, generation_args, load_for_inference
from ..preflight import check_bpe_dir, check_checkpoint_file
from .errors import UserError, quiet_logs, run_cli

logger = logging.getLogger("ofa_el.evaluate")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the TSV file(s) to evaluate, comma-separated")
    parser.add_argument("--path", required=True, help="checkpoint file")
    parser.add_argument("--bpe-dir", default=None,
                        help="encoder.json, vocab.bpe, dict.txt; default: the checkpoint's own, if that folder exists")
    parser.add_argument("--selected-cols", default=None, help="default: the task's (caption: 1,4,2 for image ids)")
    parser.add_argument("--results-path", default="results", help="directory for <gen-subset>_predict.json")
    parser.add_argument("--metrics-json", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--ans2label-file", default=None,
                        help="vqa_gen, image_classify: the candidate answers or classes (default: the "
                             "checkpoint's --ans2label-file)")
    add_generation_options(parser)
    vqa = parser.add_argument_group("vqa_gen")
    vqa.add_argument("--inference-type", choices=("allcand", "beamsearch"), default="allcand",
                     help="allcand: every candidate answer scored (OFA's evaluate_vqa_allcand.sh); beamsearch: beam "
                          "search constrained by the answer trie (OFA's --beam-search-vqa-eval)")
    vqa.add_argument("--ema-eval", action="store_true", help="evaluate the checkpoint's EMA weights (--store-ema)")
    vqa.add_argument("--valid-batch-size", type=int, default=None,
                     help="candidates scored per decoder pass (default: the checkpoint's)")
    return parser.parse_args(argv)


def load(args: argparse.Namespace):
    """``(model, cfg, task, use_cuda)`` of ``--path``, its task set up for the command's options."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(args.path)
    task_cfg = state["cfg"].task
    overrides = {}
    if args.selected_cols:
        overrides["selected_cols"] = args.selected_cols
    if task_cfg._name == "refcoco":
        overrides["unrestricted_decoding"] = getattr(args, "unrestricted_decoding", False)
    for name in ("ans2label_file", "valid_batch_size"):  # callers that build their own Namespace may leave them out
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    use_cuda = torch.cuda.is_available() and not args.cpu
    model, cfg, task = load_for_inference(args.path, state, overrides, bpe_dir=args.bpe_dir,
                                          ema=getattr(args, "ema_eval", False), use_cuda=use_cuda)
    return model, cfg, task, use_cuda


def batches(task, path: str, batch_size: int, use_cuda: bool):
    """Batches of one split, with a progress bar (items/s, elapsed) on stderr; a bar redrawn at most every
    30 s when stderr is not a terminal (a nohup log)."""
    from fairseq import utils
    from tqdm import tqdm

    dataset = task.build_dataset(path, "test")
    iterator = task.get_batch_iterator(dataset, max_sentences=batch_size).next_epoch_itr(shuffle=False)
    interactive = sys.stderr.isatty()
    with tqdm(total=len(dataset), desc=split_name(path), unit=" items", file=sys.stderr, dynamic_ncols=interactive,
              mininterval=0.5 if interactive else 30.0) as progress:
        for sample in iterator:
            if sample:
                yield utils.move_to_cuda(sample) if use_cuda else sample
                progress.update(len(sample["id"]))


def require_java() -> None:
    """Caption metrics run Java programs (PTB tokenizer, METEOR): fail before hours of generation, not after."""
    if shutil.which("java") is None:
        raise UserError("java not found on PATH: caption evaluation needs it for the PTB tokenizer and METEOR "
                        "(install a Java runtime, e.g. apt-get install default-jre-headless, or conda install "
                        "openjdk)")


def evaluate_caption(args, path, model, task, use_cuda) -> Dict[str, float]:
    from ..data.scoring import coco_caption_metrics

    generator = task.build_generator([model], generation_args(args, "caption"))
    predictions, records = [], []
    for sample in batches(task, path, args.batch_size, use_cuda):
        for sample_id, tokens, refs in zip(sample["id"].tolist(), task.hypotheses(generator, model, sample),
                                           sample["references"]):
            caption = task.caption_text(tokens)
            predictions.append({"image_id": str(sample_id), "caption": caption})
            records.append((str(sample_id), caption, refs))
    write_json(args, path, predictions)
    return coco_caption_metrics(records)


def evaluate_refcoco(args, path, model, task, use_cuda) -> Dict[str, float]:
    from ..data.scoring import grounding_metrics

    generator, decoding_model = task.box_generator(model, generation_args(args, "refcoco"))
    predictions, records = [], []
    for sample in batches(task, path, args.batch_size, use_cuda):
        boxes = torch.nan_to_num(task.predicted_boxes(generator, decoding_model, sample), nan=-1.0)
        for uniq_id, box, target in zip(sample["id"].tolist(), boxes.tolist(), sample["region_coords"].tolist()):
            predictions.append({"uniq_id": str(uniq_id), "box": box})
            records.append((str(uniq_id), box, target))
    write_json(args, path, predictions)
    scores = grounding_metrics(records)
    return {"Acc@0.5": scores["acc"], "mIoU": scores["miou"], "n": scores["count"]}


def evaluate_candidates(args, path, model, task, use_cuda) -> Dict[str, float]:
    """A fixed-candidate task (snli_ve, image_classify): each sample's answer by all-candidate scoring, and the
    mean of its ``ref_dict`` score (the gold answer's 1.0, so the accuracy)."""
    predictions, total = [], 0.0
    with torch.no_grad():
        for sample in batches(task, path, args.batch_size, use_cuda):
            answers = task.predict_answers(model, sample, "allcand")
            total += sum(task.answer_scores(answers, sample["ref_dict"]))
            predictions += [{"uniq_id": uniq_id.item() if hasattr(uniq_id, "item") else uniq_id, "answer": answer}
                            for uniq_id, answer in zip(sample["id"], answers)]
    write_json(args, path, predictions)
    return {"accuracy": total / max(1, len(predictions)), "n": len(predictions)}


def evaluate_vqa(args, path, model, task, use_cuda) -> Dict[str, float]:
    """``<split>_predict.json`` as ``[{"question_id": int, "answer": str}]`` (the VQA server's format) and the
    VQA score against the split's answers column (meaningless for a test file whose answers are placeholders)."""
    generator = task.answer_generator(model, generation_args(args, "vqa_gen")) \
        if args.inference_type == "beamsearch" else None
    predictions, total = [], 0.0
    for sample in batches(task, path, args.batch_size, use_cuda):
        with torch.no_grad():
            answers = task.predict_answers(model, sample, args.inference_type, generator)
        total += sum(task.answer_scores(answers, sample["ref_dict"]))
        predictions += [{"question_id": int(qid), "answer": answer} for qid, answer in zip(sample["id"].tolist(),
                                                                                            answers)]
    write_json(args, path, predictions)
    return {"vqa_score": total / max(len(predictions), 1), "n": len(predictions)}


def split_name(path: str) -> str:
    return Path(path).name.rsplit(".tsv", 1)[0]


def write_json(args, path: str, predictions: List[Dict[str, Any]]) -> None:
    out = Path(args.results_path) / f"{split_name(path)}_predict.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(predictions, indent=1) + "\n")
    print(f"predictions: {out}")


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        force=True)
    quiet_logs()
    args = parse_args(argv)
    claim_folder_name()  # the checkpoint's --user-dir names this folder
    paths = [p for p in args.data.split(",") if p]
    for path in paths + [args.path]:
        if not os.path.isfile(path):
            raise UserError(f"file not found: {path}")
    check_checkpoint_file(args.path, "--path")  # an empty or text file: one line, not torch's traceback
    if args.bpe_dir is not None:  # else the checkpoint's own folder, checked once the checkpoint is read
        check_bpe_dir(args.bpe_dir)
    model, cfg, task, use_cuda = load(args)
    evaluators = {"caption": evaluate_caption, "refcoco": evaluate_refcoco, "vqa_gen": evaluate_vqa,
                  "snli_ve": evaluate_candidates, "image_classify": evaluate_candidates}
    if cfg.task._name not in evaluators:
        raise UserError(f"{args.path} was trained with task {cfg.task._name!r}; expected one of "
                        f"{', '.join(evaluators)}")
    if cfg.task._name == "caption":
        require_java()
    table = {split_name(path): evaluators[cfg.task._name](args, path, model, task, use_cuda) for path in paths}
    names = list(next(iter(table.values())))
    print(f"{'split':<20}" + "".join(f"{name:>10}" for name in names))
    for split, metrics in table.items():
        print(f"{split:<20}" + "".join(f"{metrics[name]:>10.4f}" if isinstance(metrics[name], float)
                                       else f"{metrics[name]:>10}" for name in names))
    if args.metrics_json:
        Path(args.metrics_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics_json).write_text(json.dumps(table, indent=2) + "\n")
    return table


if __name__ == "__main__":
    run_cli(main)
