#!/bin/sh
# SNLI-VE visual entailment finetuning with cross-entropy (OFA's train_snli_ve_base.sh, ofa_base).
# Hyper-parameters: configs/snli_ve/snli_ve_base_ce.yaml. Paths and processes from the environment:
#   DATA_DIR BPE_DIR RESTORE_FILE SAVE_DIR; NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT;
#   DEMO=1 trains the CPU-sized demo variant on demo/data (make demo-all generates it).
# Usage: nohup sh run_scripts/snli_ve/train_snli_ve_base.sh > train_snli_ve_base.log 2>&1 &
exec sh "$(dirname "$0")/../launch.sh" snli_ve/snli_ve_base_ce.yaml "$@"
