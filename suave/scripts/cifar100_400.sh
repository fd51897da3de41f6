# Suave, CIFAR-100 with 400 labels (torchvision download into data/cifar100). Seeds:
# add data.split_seed=S train.seed=S; scripts/cifar100_protocol.py runs all three seeds.
--config suave/configs/cifar100_400.yaml
