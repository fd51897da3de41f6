# Daino, cifar100_400 (see daino/configs/cifar100_400.yaml).
--config daino/configs/cifar100_400.yaml
