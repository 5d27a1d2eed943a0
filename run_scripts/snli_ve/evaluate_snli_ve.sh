#!/bin/sh
# Evaluate an SNLI-VE checkpoint (OFA's evaluate_snli_ve.sh): all-candidate answers over yes/no/maybe, predictions
# JSON and accuracy. SPLIT=dev|test (default test) picks dataset/snli_ve_data/snli_ve_<SPLIT>.tsv;
# DATA_DIR BPE_DIR CHECKPOINT RESULTS_DIR override the paths; DEMO=1 for the demo.
# Recipe: configs/snli_ve/evaluate.yaml.
# Usage: SPLIT=dev CHECKPOINT=checkpoints/snli_ve_el/checkpoint_best.pt sh run_scripts/snli_ve/evaluate_snli_ve.sh
SPLIT=${SPLIT:-test}
case "$SPLIT" in
  dev|test) ;;
  *) echo "error: SPLIT must be dev or test, got '$SPLIT'" >&2; exit 2 ;;
esac
export SPLIT
exec sh "$(dirname "$0")/../launch.sh" snli_ve/evaluate.yaml "$@"
