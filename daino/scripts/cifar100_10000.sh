# Daino, cifar100_10000 (see daino/configs/cifar100_10000.yaml).
--config daino/configs/cifar100_10000.yaml
