# Suave fine-tuning on ImageNet 10% (5 epochs, lr 0.03 -> 0.0003). The checkpoint to fine-tune
# is an argument of the launcher, not a placeholder to edit:
#   python job_launcher.py --mode slurm --num_gpus 4 --method suave --data_dir /path/to/imagenet \
#       --script_file suave/scripts/finetune_10perc.sh --init runs/suave_train_10perc/checkpoints/last.pth
--config suave/configs/finetune_10perc.yaml
