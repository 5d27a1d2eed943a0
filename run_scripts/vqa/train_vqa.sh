#!/bin/sh
# VQAv2 finetuning with label-smoothed cross-entropy, ofa_large (OFA's train_vqa_distributed.sh).
# Hyper-parameters: configs/vqa/vqa_ce.yaml. Paths and processes from the environment:
#   DATA_DIR BPE_DIR RESTORE_FILE SAVE_DIR; NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT;
#   DEMO=1 trains the CPU-sized demo variant on demo/data (make demo-all generates it).
# Usage: nohup sh run_scripts/vqa/train_vqa.sh > train_vqa.log 2>&1 &
exec sh "$(dirname "$0")/../launch.sh" vqa/vqa_ce.yaml "$@"
