"""Evaluate a caption or refcoco checkpoint on one split: predictions to JSON, metrics printed.

    python -m ofa_el.tools.evaluate DATA.tsv --path checkpoint_best.pt --bpe-dir BPE \
        --results-path results/caption [--gen-subset test] [--beam 5 ...] [--metrics-json out.json]

Caption writes ``[{"image_id", "caption"}]`` and prints BLEU-4, METEOR, ROUGE-L and CIDEr
(pycocoevalcap, against the references in the TSV; SPICE is skipped: it needs downloads).
Refcoco writes ``[{"uniq_id", "box"}]`` and prints Acc@0.5 and mean IoU.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

logger = logging.getLogger("ofa_el.evaluate")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the TSV to evaluate")
    parser.add_argument("--path", required=True, help="checkpoint file")
    parser.add_argument("--bpe-dir", required=True)
    parser.add_argument("--selected-cols", default=None, help="default: the task's (caption: 1,4,2 for image ids)")
    parser.add_argument("--gen-subset", default="test", help="name used for the output file")
    parser.add_argument("--results-path", default="results", help="directory for <gen-subset>_predict.json")
    parser.add_argument("--metrics-json", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-len-a", type=float, default=0)
    parser.add_argument("--max-len-b", type=int, default=None, help="default: 16 for caption, 4 for refcoco")
    parser.add_argument("--min-len", type=int, default=None, help="default: 1 for caption, 4 for refcoco")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=3)
    parser.add_argument("--unrestricted-decoding", action="store_true",
                        help="refcoco: let the decoder emit any token as a coordinate (OFA's behaviour)")
    parser.add_argument("--cpu", action="store_true", help="evaluate on CPU even if CUDA is available")
    return parser.parse_args(argv)


def load(args: argparse.Namespace):
    from fairseq import checkpoint_utils

    overrides: Dict[str, Any] = {"data": f"{args.data},{args.data}", "bpe_dir": args.bpe_dir}
    if args.selected_cols:
        overrides["selected_cols"] = args.selected_cols
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([args.path], arg_overrides=overrides)
    model = models[0]
    use_cuda = torch.cuda.is_available() and not args.cpu
    model = (model.cuda() if use_cuda else model).eval()
    return model, cfg, task, use_cuda


def generation_args(args: argparse.Namespace, task_name: str) -> argparse.Namespace:
    box = task_name == "refcoco"
    return argparse.Namespace(
        beam=args.beam, max_len_a=args.max_len_a,
        max_len_b=args.max_len_b if args.max_len_b is not None else (4 if box else 16),
        min_len=args.min_len if args.min_len is not None else (4 if box else 1),
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )


def batches(task, split: str, batch_size: int, use_cuda: bool):
    from fairseq import utils

    task.load_dataset(split)
    iterator = task.get_batch_iterator(task.dataset(split), max_sentences=batch_size).next_epoch_itr(shuffle=False)
    for sample in iterator:
        if sample:
            yield utils.move_to_cuda(sample) if use_cuda else sample


def evaluate_caption(args, model, task, use_cuda) -> Dict[str, float]:
    from ..data.scoring import coco_caption_metrics

    generator = task.build_generator([model], generation_args(args, "caption"))
    predictions, records = [], []
    for sample in batches(task, "test", args.batch_size, use_cuda):
        for sample_id, tokens, refs in zip(sample["id"].tolist(), task.hypotheses(generator, model, sample),
                                           sample["references"]):
            caption = task.caption_text(tokens)
            predictions.append({"image_id": str(sample_id), "caption": caption})
            records.append((str(sample_id), caption, refs))
    write_json(args, predictions)
    return coco_caption_metrics(records)


def evaluate_refcoco(args, model, task, use_cuda) -> Dict[str, float]:
    from ..data.scoring import grounding_metrics

    task.cfg.unrestricted_decoding = args.unrestricted_decoding
    generator, decoding_model = task.box_generator(model, generation_args(args, "refcoco"))
    predictions, records = [], []
    for sample in batches(task, "test", args.batch_size, use_cuda):
        boxes = torch.nan_to_num(task.predicted_boxes(generator, decoding_model, sample), nan=-1.0)
        for uniq_id, box, target in zip(sample["id"].tolist(), boxes.tolist(), sample["region_coords"].tolist()):
            predictions.append({"uniq_id": str(uniq_id), "box": box})
            records.append((str(uniq_id), box, target))
    write_json(args, predictions)
    scores = grounding_metrics(records)
    return {"Acc@0.5": scores["acc"], "mIoU": scores["miou"], "n": scores["count"]}


def write_json(args, predictions: List[Dict[str, Any]]) -> None:
    out = Path(args.results_path) / f"{args.gen_subset}_predict.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(predictions, indent=1) + "\n")
    print(f"predictions: {out}")


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    args = parse_args(argv)
    for path in (args.data, args.path):
        if not os.path.isfile(path):
            sys.exit(f"error: file not found: {path}")
    model, cfg, task, use_cuda = load(args)
    task_name = cfg.task._name
    if task_name == "caption":
        metrics = evaluate_caption(args, model, task, use_cuda)
    elif task_name == "refcoco":
        metrics = evaluate_refcoco(args, model, task, use_cuda)
    else:
        sys.exit(f"error: {args.path} was trained with task {task_name!r}; expected caption or refcoco")
    print(f"{args.gen_subset}:")
    for name, value in metrics.items():
        print(f"  {name:<8} {value:.4f}" if isinstance(value, float) else f"  {name:<8} {value}")
    if args.metrics_json:
        Path(args.metrics_json).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main()
