# Self-supervised stage for CIFAR-100 (Suave with zero labels = SwAV); its last.pth feeds
# cifar100_*.sh through --init.
--config suave/configs/cifar100_ssl.yaml
