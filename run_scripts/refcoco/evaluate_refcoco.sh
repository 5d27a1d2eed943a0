#!/bin/sh
# Evaluate a grounding checkpoint on every split of one set (OFA's evaluate_refcoco.sh): predictions JSON per split
# and a table of Acc@0.5. SET=refcoco|refcocoplus|refcocog (default refcoco) picks the data (OFA's layout:
# dataset/<SET>_data), the checkpoint (checkpoints/<SET>_el/checkpoint_best.pt) and the results dir (results/<SET>);
# DATA_DIR BPE_DIR CHECKPOINT RESULTS_DIR override them; DEMO=1 for the demo.
# Recipes: configs/refcoco/evaluate.yaml (val, testA, testB), evaluate_refcocog.yaml (val, test).
# Usage: SET=refcocog CHECKPOINT=... sh run_scripts/refcoco/evaluate_refcoco.sh [--unrestricted-decoding]
SET=${SET:-refcoco}
case "$SET" in
  refcocog) recipe=refcoco/evaluate_refcocog.yaml ;;
  refcoco|refcocoplus) recipe=refcoco/evaluate.yaml ;;
  *) echo "error: SET must be refcoco, refcocoplus or refcocog, got '$SET'" >&2; exit 2 ;;
esac
export SET
exec sh "$(dirname "$0")/../launch.sh" "$recipe" "$@"
