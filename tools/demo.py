"""``make demo``: the published recipes, end to end, on the embedded synthetic data (CPU, minutes).

1. writes the demo data set (synthetic shapes, captions, referring expressions, a small BPE)
   to ``demo/data`` unless it is there;
2. caption: trains ``configs/caption/stage1_el.yaml`` (its demo variant) with EL, keeps the best
   checkpoint by validation CIDEr, evaluates it on the test split (BLEU-4, METEOR, ROUGE-L, CIDEr);
3. refcoco: trains ``configs/refcoco/refcoco_el.yaml`` (demo variant), keeps the best checkpoint
   by Acc@0.5, evaluates val/testA/testB with bin-restricted decoding and with OFA's unrestricted
   decoding; ``--all`` (``make demo-all``) adds refcoco+ and refcocog, which start from the
   refcoco model (the demo's stand-in for OFA's pretrained checkpoint, whose pretraining
   includes grounding).
4. ``--all`` also runs caption stage 2 (``configs/caption/stage2_el.yaml``: self-critical CIDEr-D
   training from a short, 150-update stage-1 EL model) and reports the test metrics of both stages.
5. ``--all`` also runs SNLI-VE (``configs/snli_ve/snli_ve_el.yaml``: statements about the shapes that the
   image entails, contradicts or leaves open) and image classification
   (``configs/image_classify/imagenet_el.yaml``: 4 shape classes in any colour, trained unaugmented), both
   from the caption model, and prints their test accuracy beside the majority-class baseline.
6. ``--all`` also runs vqa (``configs/vqa/vqa_el.yaml``: synthetic questions about the shape images, finetuned
   from the caption model) and reports the test VQA score of all-candidate and beam-search inference beside
   the majority-answer baseline (each question kind answered with its most common training answer).

Every step runs the same run_scripts a user runs (``DEMO=1``), so the demo exercises the real
code path. Metrics go to ``demo/metrics.json``; logs to ``demo/logs``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..recipes import REPO_ROOT, expand, load_recipe
from ..script_runner import CommandFailed, run_demo_script
from ..synthetic.demo_set import make_demo_data
from ..synthetic.scenes import majority_baseline
from ..synthetic.vqa import majority_baseline as vqa_majority_baseline
from .errors import run_cli

DEMO = REPO_ROOT / "demo"
#: Grounding is learnt more slowly than captioning: more rows than the generator's default.
GROUNDING_TRAIN_ROWS = 4000
#: The recipe each part trains (its demo block says where it saves and what it restores).
PART_RECIPES = {"caption": "caption/stage1_el.yaml", "caption_stage2": "caption/stage2_el.yaml",
                "refcoco": "refcoco/refcoco_el.yaml",
                "refcocoplus": "refcoco/refcocoplus_el.yaml", "refcocog": "refcoco/refcocog_el.yaml",
                "snli_ve": "snli_ve/snli_ve_el.yaml", "image_classify": "image_classify/imagenet_el.yaml",
                "vqa": "vqa/vqa_el.yaml"}
#: Images of the demo's VQA files (three questions each), and the side of every caption and VQA image.
VQA_TRAIN_IMAGES, VQA_EVAL_IMAGES, VQA_IMAGE_SIZE = 1000, 100, 64
#: Rows of the (train, dev/val, test) files of the fixed-candidate parts.
SNLI_VE_ROWS, IMAGE_CLASSIFY_ROWS = (3000, 300, 300), (2400, 240, 240)
#: One file each generator writes: all present means the data set is complete.
DEMO_DATA_FILES = ("caption_stage2_train.tsv", "refcocog_test.tsv", "bpe/dict.txt", "vqa_test.tsv",
                   "snli_ve_test.tsv", "image_classify_test.tsv", "class2label_new.pkl")
#: Updates of the stage-1 model that the stage-2 demo starts from (the full stage 1 leaves SCST little room).
SHORT_STAGE1_UPDATES = 150
GROUNDING_SPLITS = {"refcoco": ["val", "testA", "testB"], "refcocoplus": ["val", "testA", "testB"],
                    "refcocog": ["val", "test"]}


def demo_path(part: str, name: str) -> Optional[Path]:
    """The path the part's recipe gives ``$name`` (SAVE_DIR, RESTORE_FILE) in its demo variant; None if unset."""
    recipe_path = REPO_ROOT / "configs" / PART_RECIPES[part]
    defaults = load_recipe(recipe_path, demo=True).get("env") or {}
    return Path(expand(f"${{{name}}}", {}, defaults, str(recipe_path))) if name in defaults else None


def best_checkpoint(part: str) -> Path:
    return demo_path(part, "SAVE_DIR") / "checkpoint_best.pt"


def starts_from(part: str) -> Optional[str]:
    """The part whose best checkpoint this part's demo restores (None: it restores nothing a part trains)."""
    restore = demo_path(part, "RESTORE_FILE")
    return next((other for other in PART_RECIPES if other != part and best_checkpoint(other) == restore), None)


def run(script: str, log: Path, env: Dict[str, str], *extra: str) -> None:
    """Run a run_scripts/*.sh in demo mode, its output into ``log``; fail loudly with the log's tail."""
    try:
        run_demo_script(script, env, *extra, log=log, cwd=REPO_ROOT)
    except CommandFailed as err:
        raise SystemExit(str(err)) from None


def ensure_data() -> None:
    """The demo data set in demo/data, every part's files (written anew when one is missing)."""
    if all((DEMO / "data" / name).is_file() for name in DEMO_DATA_FILES):
        return
    print("writing the demo data set to demo/data ...", flush=True)
    make_demo_data(str(DEMO / "data"), seed=0, refcoco_train_images=GROUNDING_TRAIN_ROWS,
                   vqa_train_images=VQA_TRAIN_IMAGES, vqa_eval_images=VQA_EVAL_IMAGES, image_size=VQA_IMAGE_SIZE,
                   snli_ve_rows=SNLI_VE_ROWS, classify_rows=IMAGE_CLASSIFY_ROWS)


def caption() -> Dict[str, Dict[str, float]]:
    start = time.time()
    print("caption: training the demo model with EL (configs/caption/stage1_el.yaml) ...", flush=True)
    run("caption/train_caption_stage1_el.sh", DEMO / "logs" / "caption_train.log", {})
    run("caption/evaluate_caption.sh", DEMO / "logs" / "caption_eval.log", {})
    metrics = json.loads((DEMO / "results" / "caption" / "metrics.json").read_text())
    shown = {name: metrics["caption_test"][key] for name, key in
             (("BLEU-4", "Bleu_4"), ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE_L"), ("CIDEr", "CIDEr"))}
    print(f"caption: {time.time() - start:.0f} s; test " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    return {"test": shown}


def caption_test_metrics(checkpoint: Path, results: Path, log: Path) -> Dict[str, float]:
    """BLEU-4, METEOR, ROUGE-L and CIDEr of ``checkpoint`` on the demo's caption test split."""
    run("caption/evaluate_caption.sh", log, {"CHECKPOINT": str(checkpoint), "RESULTS_DIR": str(results)})
    metrics = json.loads((results / "metrics.json").read_text())
    return {name: metrics["caption_test"][key] for name, key in
            (("BLEU-4", "Bleu_4"), ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE_L"), ("CIDEr", "CIDEr"))}


def caption_stage2() -> Dict[str, Dict[str, float]]:
    """Self-critical training from a short stage-1 EL model; both models scored on the test split the same way.

    The full demo stage 1 leaves self-critical training little room on these synthetic captions, so the comparison
    starts from a stage-1 run of ``SHORT_STAGE1_UPDATES`` updates (trained here when missing)."""
    start = time.time()
    stage1 = demo_path("caption_stage2", "RESTORE_FILE")
    if not stage1.is_file():
        print(f"caption_stage2: a short stage-1 EL model first ({SHORT_STAGE1_UPDATES} updates) ...", flush=True)
        run("caption/train_caption_stage1_el.sh", DEMO / "logs" / "caption_stage1_short_train.log",
            {"SAVE_DIR": str(stage1.parent)}, "--max-epoch", "1", "--max-update", str(SHORT_STAGE1_UPDATES))
    before = caption_test_metrics(stage1, DEMO / "results" / "caption_stage2_from",
                                  DEMO / "logs" / "caption_stage2_from_eval.log")
    print("caption_stage2: self-critical CIDEr training from the short stage-1 EL model "
          "(configs/caption/stage2_el.yaml) ...", flush=True)
    run("caption/train_caption_stage2_el.sh", DEMO / "logs" / "caption_stage2_train.log", {})
    after = caption_test_metrics(best_checkpoint("caption_stage2"), DEMO / "results" / "caption_stage2",
                                 DEMO / "logs" / "caption_stage2_eval.log")
    print(f"caption_stage2: {time.time() - start:.0f} s; test CIDEr {before['CIDEr']:.3f} (stage 1) -> "
          f"{after['CIDEr']:.3f} (stage 2)")
    return {"stage1_test": before, "test": after}


def grounding(set_name: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    start = time.time()
    recipe = {"refcoco": "train_refcoco_el.sh", "refcocoplus": "train_refcocoplus_el.sh",
              "refcocog": "train_refcocog_el.sh"}[set_name]
    checkpoint = best_checkpoint(set_name)
    print(f"{set_name}: training the demo model with EL ...", flush=True)
    run(f"refcoco/{recipe}", DEMO / "logs" / f"{set_name}_train.log", {})
    results = {}
    for mode, extra in (("restricted", []), ("unrestricted", ["--unrestricted-decoding"])):
        out = DEMO / "results" / f"{set_name}_{mode}"
        run("refcoco/evaluate_refcoco.sh", DEMO / "logs" / f"{set_name}_eval_{mode}.log",
            {"SET": set_name, "CHECKPOINT": str(checkpoint), "RESULTS_DIR": str(out)}, *extra)
        table = json.loads((out / "metrics.json").read_text())
        results[mode] = {split: {"Acc@0.5": table[f"{set_name}_{split}"]["Acc@0.5"],
                                 "mIoU": table[f"{set_name}_{split}"]["mIoU"]} for split in GROUNDING_SPLITS[set_name]}
    line = ", ".join(f"{split} {values['Acc@0.5']:.3f}" for split, values in results["restricted"].items())
    print(f"{set_name}: {time.time() - start:.0f} s; Acc@0.5 {line}")
    return results


#: Per candidate part: its training and evaluation scripts, test file and label column.
CANDIDATE_PARTS = {
    "snli_ve": ("snli_ve/train_snli_ve_el.sh", "snli_ve/evaluate_snli_ve.sh", "snli_ve_test.tsv", 5),
    "image_classify": ("image_classify/train_imagenet_el.sh", "image_classify/evaluate_imagenet.sh",
                       "image_classify_test.tsv", 2),
}


def candidate_part(part: str) -> Dict[str, Dict[str, float]]:
    """Train a fixed-candidate part with EL, score its test split with every candidate, and compare with always
    answering the test split's commonest label."""
    start = time.time()
    train_script, eval_script, test_file, label_column = CANDIDATE_PARTS[part]
    print(f"{part}: training the demo model with EL ({PART_RECIPES[part]}) ...", flush=True)
    run(train_script, DEMO / "logs" / f"{part}_train.log", {})
    results = DEMO / "results" / part
    run(eval_script, DEMO / "logs" / f"{part}_eval.log", {"RESULTS_DIR": str(results)})
    table = json.loads((results / "metrics.json").read_text())
    accuracy = table[test_file[:-len(".tsv")]]["accuracy"]
    label, share = majority_baseline(str(DEMO / "data" / test_file), label_column)
    print(f"{part}: {time.time() - start:.0f} s; test accuracy {accuracy:.3f} (majority class {label!r}: {share:.3f})")
    return {"test": {"accuracy": accuracy, "majority_baseline": share, "majority_class": label}}


def vqa() -> Dict[str, float]:
    """VQA with EL from the caption model; test VQA score of both inference types beside the majority baseline."""
    start = time.time()
    data = DEMO / "data"
    print("vqa: training the demo model with EL (configs/vqa/vqa_el.yaml) ...", flush=True)
    run("vqa/train_vqa_el.sh", DEMO / "logs" / "vqa_train.log", {})
    results = {"majority_baseline": vqa_majority_baseline(str(data / "vqa_train.tsv"), str(data / "vqa_test.tsv"))}
    for inference in ("allcand", "beamsearch"):
        out = DEMO / "results" / f"vqa_{inference}"
        run("vqa/evaluate_vqa.sh", DEMO / "logs" / f"vqa_eval_{inference}.log",
            {"SPLIT": "test", "RESULTS_DIR": str(out)}, "--inference-type", inference)
        results[inference] = json.loads((out / "metrics.json").read_text())["vqa_test"]["vqa_score"]
    print(f"vqa: {time.time() - start:.0f} s; test VQA score allcand {results['allcand']:.3f}, beamsearch "
          f"{results['beamsearch']:.3f}, majority baseline {results['majority_baseline']:.3f}")
    return results


def print_table(metrics: Dict) -> None:
    print("\n== demo results (synthetic data; see README.md) ==")
    if "caption" in metrics:
        print("caption test: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics["caption"]["test"].items()))
    if "caption_stage2" in metrics:
        for label, key in (("stage 1", "stage1_test"), ("stage 2", "test")):
            print(f"caption {label} (SCST comparison) test: " + "  ".join(
                f"{k} {v:.3f}" for k, v in metrics["caption_stage2"][key].items()))
    for set_name in GROUNDING_SPLITS:
        if set_name in metrics:
            for split, values in metrics[set_name].items():
                other = metrics[f"{set_name}_unrestricted_decoding"][split]["Acc@0.5"]
                print(f"{set_name} {split:<6} Acc@0.5 {values['Acc@0.5']:.3f} (unrestricted decoding {other:.3f}), "
                      f"mIoU {values['mIoU']:.3f}")
    for part in CANDIDATE_PARTS:
        if part in metrics:
            test = metrics[part]["test"]
            print(f"{part} test: accuracy {test['accuracy']:.3f} (majority-class baseline "
                  f"{test['majority_baseline']:.3f}, always {test['majority_class']!r})")
    if "vqa" in metrics:
        print("vqa test: VQA score allcand {allcand:.3f}  beamsearch {beamsearch:.3f}  (majority-answer baseline "
              "{majority_baseline:.3f})".format(**metrics["vqa"]))


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true",
                        help="also caption stage 2, refcoco+, refcocog, vqa, snli_ve and image_classify")
    parser.add_argument("--only", choices=list(PART_RECIPES), help="run a single part")
    args = parser.parse_args(argv)
    start = time.time()
    ensure_data()
    if args.only:
        parts = [args.only]
    elif args.all:
        parts = ["caption", "caption_stage2", "refcoco", "refcocoplus", "refcocog", "vqa", "snli_ve",
                 "image_classify"]
    else:
        parts = ["caption", "refcoco"]
    while starts_from(parts[0]) and not best_checkpoint(starts_from(parts[0])).is_file():
        source = starts_from(parts[0])
        print(f"{parts[0]} starts from {best_checkpoint(source).relative_to(REPO_ROOT)}, which is missing: "
              f"running {source} first", flush=True)
        parts.insert(0, source)
    metrics_path = DEMO / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for part in parts:
        if part == "caption":
            metrics["caption"] = caption()
        elif part == "caption_stage2":
            metrics["caption_stage2"] = caption_stage2()
        elif part == "vqa":
            metrics["vqa"] = vqa()
        elif part in CANDIDATE_PARTS:
            metrics[part] = candidate_part(part)
        else:
            results = grounding(part)
            metrics[part] = results["restricted"]
            metrics[f"{part}_unrestricted_decoding"] = results["unrestricted"]
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print_table(metrics)
    print(f"\ntotal {time.time() - start:.0f} s; metrics in {metrics_path}, checkpoints in {DEMO / 'checkpoints'}, "
          f"predictions in {DEMO / 'results'}")


if __name__ == "__main__":
    run_cli(main)
