# Daino fine-tuning (our recipe, README). Pass the run to fine-tune with --init:
#   python job_launcher.py --mode slurm --num_gpus 8 --method daino --data_dir /path/to/imagenet \
#       --script_file daino/scripts/finetune_1perc.sh --init runs/daino_train_1perc/checkpoints/last.pth
--config daino/configs/finetune_1perc.yaml
