#!/bin/sh
# Evaluate an image-classification checkpoint (OFA's evaluate_imagenet.sh): all-candidate scoring over the classes
# of ANS2LABEL_FILE (default dataset/imagenet_1k_data/class2label_new.pkl), predictions JSON and top-1 accuracy.
# DATA_FILE (default the full imagenet_1k_val.tsv) BPE_DIR CHECKPOINT RESULTS_DIR override the paths;
# DEMO=1 for the demo.
# Recipe: configs/image_classify/evaluate.yaml.
# Usage: CHECKPOINT=checkpoints/imagenet_el/checkpoint_best.pt sh run_scripts/image_classify/evaluate_imagenet.sh
exec sh "$(dirname "$0")/../launch.sh" image_classify/evaluate.yaml "$@"
