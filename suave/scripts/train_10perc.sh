# Suave, ImageNet 10% labels (paper recipe, ResNet-50 from SwAV 800 ep). Run with
#   python job_launcher.py --mode slurm --num_nodes 1 --num_gpus 4 --method suave \
#       --script_file suave/scripts/train_10perc.sh --data_dir /path/to/imagenet \
#       --init /path/to/swav_800ep_pretrain.pth.tar
# Any key.sub=value after the launcher options overrides the config (last wins).
--config suave/configs/imagenet_10perc.yaml
