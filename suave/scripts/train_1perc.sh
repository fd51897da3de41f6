# Suave, ImageNet 1% labels (paper recipe). Same launcher call as train_10perc.sh.
--config suave/configs/imagenet_1perc.yaml
