# Daino, ImageNet 1perc labels (paper recipe, ViT-S/16 from the DINO full checkpoint):
#   python job_launcher.py --mode slurm --num_nodes 2 --num_gpus 8 --method daino \
#       --script_file daino/scripts/train_1perc.sh --data_dir /path/to/imagenet \
#       --init /path/to/dino_deitsmall16_pretrain_full_checkpoint.pth
--config daino/configs/imagenet_1perc.yaml
