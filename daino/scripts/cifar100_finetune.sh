# Daino, semi-supervised fine-tuning on CIFAR-100 (third stage of scripts/cifar100_protocol.py).
# Pass --init <pre-training run>/checkpoints/last.pth and its data.labels_per_class / seeds.
--config daino/configs/cifar100_finetune.yaml
