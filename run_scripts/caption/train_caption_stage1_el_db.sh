#!/bin/sh
# Caption stage 1 finetuning with Encouraging Loss + drop-best (OFA's train_caption_stage1_el_db.sh).
# Hyper-parameters: configs/caption/stage1_el_db.yaml. Paths and processes from the environment:
#   DATA_DIR BPE_DIR RESTORE_FILE SAVE_DIR; NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT;
#   DEMO=1 trains the CPU-sized demo variant on demo/data (make demo generates it).
# Usage: nohup sh run_scripts/caption/train_caption_stage1_el_db.sh > train_caption_stage1_el_db.log 2>&1 &
exec sh "$(dirname "$0")/../launch.sh" caption/stage1_el_db.yaml "$@"
