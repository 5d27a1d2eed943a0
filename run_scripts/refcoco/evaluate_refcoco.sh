#!/bin/sh
# Evaluate a grounding checkpoint on every split of one set (OFA's evaluate_refcoco.sh): predictions JSON per split
# and a table of Acc@0.5. SET=refcoco|refcocoplus|refcocog (default refcoco); DATA_DIR BPE_DIR CHECKPOINT RESULTS_DIR;
# DEMO=1 for the demo. Recipe: configs/refcoco/evaluate.yaml.
# Usage: SET=refcocog CHECKPOINT=... sh run_scripts/refcoco/evaluate_refcoco.sh [--unrestricted-decoding]
set -e
set_name=${SET:-refcoco}
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${DEMO:-}" ] && [ "$DEMO" != 0 ]; then default_dir=$root/demo/data; else default_dir=$root/dataset/refcoco_data; fi
data_dir=${DATA_DIR:-$default_dir}
case "$set_name" in
  refcocog) splits="val test" ;;
  refcoco|refcocoplus) splits="val testA testB" ;;
  *) echo "error: SET must be refcoco, refcocoplus or refcocog, got '$set_name'" >&2; exit 2 ;;
esac
files=""
for split in $splits; do
  files="${files:+$files,}$data_dir/${set_name}_$split.tsv"
done
EVAL_FILES=$files exec sh "$(dirname "$0")/../launch.sh" refcoco/evaluate.yaml "$@"
