# Daino, CIFAR-100 2500 labels, lighter option: ResNet-18 + SGD (not the paper's WRN-28-8).
--config daino/configs/cifar100_2500_r18.yaml
