# Suave fine-tuning on ImageNet 1% (see finetune_10perc.sh); pass --init <1% run>/checkpoints/last.pth.
--config suave/configs/finetune_1perc.yaml
