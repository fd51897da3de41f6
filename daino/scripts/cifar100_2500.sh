# Daino, cifar100_2500 (see daino/configs/cifar100_2500.yaml).
--config daino/configs/cifar100_2500.yaml
