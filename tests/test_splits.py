import numpy as np
import pytest

from common.data.sources import ImageFolderSource
from common.data.splits import labels_per_class_split, subset_from_list
from common.errors import UserError


def test_labels_per_class_exact_and_deterministic(cifar100_mini):
    source = ImageFolderSource(cifar100_mini / "train")
    idx = labels_per_class_split(source.targets, 4, seed=0)
    counts = np.bincount(source.targets[idx], minlength=100)
    assert len(idx) == 400 and np.all(counts == 4)
    assert len(np.unique(idx)) == len(idx)
    np.testing.assert_array_equal(idx, labels_per_class_split(source.targets, 4, seed=0))
    other = labels_per_class_split(source.targets, 4, seed=1)
    assert not np.array_equal(idx, other)
    # nested sizes are class-balanced too
    assert np.all(np.bincount(source.targets[labels_per_class_split(source.targets, 25, 2)]) == 25)


def test_labels_per_class_larger_than_class():
    targets = np.array([0] * 5 + [1] * 3)
    with pytest.raises(UserError, match=r"labels per class \(4\) is larger than class 1 \(3"):
        labels_per_class_split(targets, 4, seed=0)


def test_simclr_list_real_file_format(imagenet_subsets):
    lines = (imagenet_subsets / "1percent.txt").read_text().split()
    assert len(lines) == 12811
    classes = sorted({name.split("_")[0] for name in lines})
    assert len(classes) == 1000
    # a fake "dataset" holding exactly the listed files plus extras
    names = lines[::-1] + ["n01440764_extra.JPEG"]
    idx = subset_from_list(names, classes, imagenet_subsets / "1percent.txt")
    assert len(idx) == 12811 and (len(names) - 1) not in idx


def test_simclr_list_errors(tmp_path):
    names = ["n01_1.JPEG", "n01_2.JPEG", "n02_1.JPEG"]
    lst = tmp_path / "list.txt"
    lst.write_text("n01_1.JPEG\nn03_7.JPEG\n")
    with pytest.raises(UserError, match=r"line 2: class 'n03' is not in the dataset"):
        subset_from_list(names, ["n01", "n02"], lst)
    lst.write_text("n01_1.JPEG\n\nn02_9.JPEG\n")
    with pytest.raises(UserError, match=r"line 3: file 'n02_9.JPEG' not found"):
        subset_from_list(names, ["n01", "n02"], lst)
    with pytest.raises(UserError, match="label list not found"):
        subset_from_list(names, ["n01"], tmp_path / "missing.txt")
