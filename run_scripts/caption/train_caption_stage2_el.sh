#!/bin/sh
# Caption stage 2: self-critical CIDEr-D training from the stage-1 Encouraging-Loss model.
# Hyper-parameters: configs/caption/stage2_el.yaml. Paths and processes from the environment:
#   DATA_DIR BPE_DIR RESTORE_FILE SAVE_DIR; NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT;
#   DEMO=1 trains the CPU-sized demo variant on demo/data, from the demo's stage-1 EL model.
# Usage: nohup sh run_scripts/caption/train_caption_stage2_el.sh > train_caption_stage2_el.log 2>&1 &
exec sh "$(dirname "$0")/../launch.sh" caption/stage2_el.yaml "$@"
