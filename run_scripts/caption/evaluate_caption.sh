#!/bin/sh
# Evaluate a caption checkpoint on caption_test.tsv (OFA's evaluate_caption.sh): predictions JSON + COCO metrics.
# Recipe: configs/caption/evaluate.yaml. Environment: DATA_DIR BPE_DIR CHECKPOINT RESULTS_DIR; DEMO=1 for the demo.
# Usage: sh run_scripts/caption/evaluate_caption.sh [extra evaluate options, e.g. --beam 3]
exec sh "$(dirname "$0")/../launch.sh" caption/evaluate.yaml "$@"
