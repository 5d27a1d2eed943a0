#!/bin/sh
# Evaluate a VQA checkpoint (OFA's evaluate_vqa_allcand.sh; add --inference-type beamsearch for evaluate_vqa_beam.sh):
# vqa_<split>_predict.json per split ([{"question_id": int, "answer": str}], the VQA server's format) and the VQA
# score table. SPLIT=val|test (default val) picks dataset/vqa_data/vqa_<SPLIT>.tsv; DATA_DIR BPE_DIR CHECKPOINT
# RESULTS_DIR override the paths; DEMO=1 for the demo. Recipe: configs/vqa/evaluate.yaml.
# Usage: CHECKPOINT=checkpoints/vqa_el/checkpoint_best.pt sh run_scripts/vqa/evaluate_vqa.sh [--inference-type beamsearch]
SPLIT=${SPLIT:-val}
export SPLIT
exec sh "$(dirname "$0")/../launch.sh" vqa/evaluate.yaml "$@"
