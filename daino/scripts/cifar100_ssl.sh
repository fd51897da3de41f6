# Self-supervised stage for CIFAR-100 (Daino with zero labels = DINO); its last.pth feeds
# cifar100_*.sh through --init.
--config daino/configs/cifar100_ssl.yaml
