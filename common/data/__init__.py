"""Data: image sources, labeled splits, multi-crop augmentations and the joint loader."""

from common.data.loaders import DataConfig, TrainData, build_train_data, build_val_loader

__all__ = ["DataConfig", "TrainData", "build_train_data", "build_val_loader"]
