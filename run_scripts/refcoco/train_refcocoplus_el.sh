#!/bin/sh
# RefCOCO+ visual grounding finetuning with Encouraging Loss, log_end 0.75 (OFA's train_refcocoplus_el.sh).
# Hyper-parameters: configs/refcoco/refcocoplus_el.yaml. Paths and processes from the environment:
#   DATA_DIR BPE_DIR RESTORE_FILE SAVE_DIR; NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT;
#   DEMO=1 trains the CPU-sized demo variant on demo/data (make demo generates it).
# Usage: nohup sh run_scripts/refcoco/train_refcocoplus_el.sh > train_refcocoplus_el.log 2>&1 &
exec sh "$(dirname "$0")/../launch.sh" refcoco/refcocoplus_el.yaml "$@"
