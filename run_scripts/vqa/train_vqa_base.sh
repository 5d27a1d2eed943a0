#!/bin/sh
# VQAv2 finetuning with label-smoothed cross-entropy, ofa_base (OFA's train_vqa_base_distributed.sh).
# Hyper-parameters: configs/vqa/vqa_base_ce.yaml. Paths and processes from the environment:
#   DATA_DIR BPE_DIR RESTORE_FILE SAVE_DIR; NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT.
# Usage: nohup sh run_scripts/vqa/train_vqa_base.sh > train_vqa_base.log 2>&1 &
exec sh "$(dirname "$0")/../launch.sh" vqa/vqa_base_ce.yaml "$@"
