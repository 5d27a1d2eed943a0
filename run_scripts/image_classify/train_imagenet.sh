#!/bin/sh
# ImageNet-1k classification finetuning with cross-entropy (OFA's train_imagenet_distributed.sh, ofa_large).
# Hyper-parameters: configs/image_classify/imagenet_ce.yaml. Paths and processes from the environment:
#   DATA_DIR (holding class2label_new.pkl) BPE_DIR RESTORE_FILE SAVE_DIR;
#   NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT;
#   DEMO=1 trains the CPU-sized demo variant on demo/data (make demo-all generates it).
# Usage: nohup sh run_scripts/image_classify/train_imagenet.sh > train_imagenet.log 2>&1 &
exec sh "$(dirname "$0")/../launch.sh" image_classify/imagenet_ce.yaml "$@"
