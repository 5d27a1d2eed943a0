#!/bin/sh
# Caption stage 2: self-critical CIDEr-D training from the stage-1 CE model (OFA's train_caption_stage2.sh).
# Hyper-parameters: configs/caption/stage2.yaml. Paths and processes from the environment:
#   DATA_DIR BPE_DIR RESTORE_FILE SAVE_DIR; NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT;
#   DEMO=1 trains the CPU-sized demo variant on demo/data, from the demo's stage-1 EL model.
# Usage: nohup sh run_scripts/caption/train_caption_stage2.sh > train_caption_stage2.log 2>&1 &
exec sh "$(dirname "$0")/../launch.sh" caption/stage2.yaml "$@"
