import numpy as np
import pytest
import torch

from common.data import DataConfig, build_train_data
from common.data.loaders import StepBatchSampler
from common.data.sources import ImageFolderSource
from common.errors import UserError


def small_cfg(root, **kw) -> DataConfig:
    base = dict(
        root=str(root), labels_per_class=4, normalization="cifar", global_size=32, local_size=16,
        num_local=2, labeled_size=32, eval_size=32, eval_resize=0, num_workers=0,
    )  # fmt: skip
    base.update(kw)
    return DataConfig(**base)


def first_batches(data, n=2, epoch=0, start=0):
    data.sampler.set_epoch(epoch, start)
    out = []
    for batch in data.loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_batch_structure(cifar10_mini):
    data = build_train_data(small_cfg(cifar10_mini), 8, 4, 0, 0, 1, torch.device("cpu"))
    (batch,) = first_batches(data, 1)
    shapes = [tuple(v.shape) for v in batch["unlabeled"]]
    assert shapes == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2
    assert batch["labeled"].shape == (4, 3, 32, 32) and batch["labels"].shape == (4,)
    assert set(batch["labels"].tolist()) <= set(range(10))
    assert data.steps_per_epoch == 5000 // 8


def test_same_step_same_crops_and_resume_skips(cifar10_mini):
    data = build_train_data(small_cfg(cifar10_mini), 8, 4, 7, 0, 1, torch.device("cpu"))
    b0, b1 = first_batches(data, 2)
    again = first_batches(data, 2)
    for x, y in zip(
        b0["unlabeled"] + [b0["labeled"]], again[0]["unlabeled"] + [again[0]["labeled"]]
    ):
        assert torch.equal(x, y)
    (resumed,) = first_batches(data, 1, epoch=0, start=1)  # resume at iteration 1
    assert torch.equal(resumed["unlabeled"][3], b1["unlabeled"][3])
    assert torch.equal(resumed["labeled"], b1["labeled"])
    other_epoch = first_batches(data, 1, epoch=1)[0]
    assert not torch.equal(other_epoch["unlabeled"][0], b0["unlabeled"][0])


def test_two_ranks_concatenate_to_one(cifar10_mini):
    cfg = small_cfg(cifar10_mini)
    dev = torch.device("cpu")
    single = first_batches(build_train_data(cfg, 8, 4, 3, 0, 1, dev), 1)[0]
    ranks = [first_batches(build_train_data(cfg, 4, 2, 3, r, 2, dev), 1)[0] for r in range(2)]
    for v in range(4):
        joined = torch.cat([ranks[0]["unlabeled"][v], ranks[1]["unlabeled"][v]])
        assert torch.equal(joined, single["unlabeled"][v])
    assert torch.equal(torch.cat([r["labeled"] for r in ranks]), single["labeled"])
    assert torch.equal(torch.cat([r["labels"] for r in ranks]), single["labels"])


def test_sampler_epoch_is_a_permutation_and_labels_cycle():
    labeled = np.array([3, 5, 7])
    sampler = StepBatchSampler(20, labeled, 4, 2, rank=0, world_size=1, seed=0)
    keys = [k for batch in sampler for k in batch]
    unl = [k[1] for k in keys if k[0] == 0]
    lab = [k[1] for k in keys if k[0] == 1]
    assert sorted(unl) == list(range(20))
    assert len(lab) == 10 and set(lab) == {3, 5, 7}
    for start in range(0, 9, 3):  # each chunk of 3 consecutive labeled draws is a permutation
        assert sorted(lab[start : start + 3]) == [3, 5, 7]


def test_errors(tmp_path, cifar10_mini):
    with pytest.raises(UserError, match="data directory not found"):
        ImageFolderSource(tmp_path / "missing")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="has no images"):
        ImageFolderSource(tmp_path / "train")
    with pytest.raises(UserError, match="fewer than one global batch"):
        StepBatchSampler(10, np.array([1]), 8, 1, 0, 2, 0)
    with pytest.raises(UserError, match="no labels selected"):
        build_train_data(small_cfg(cifar10_mini, labels_per_class=None), 8, 4, 0, 0, 1, "cpu")


def test_unlabeled_classes_ride_along_for_the_pseudo_label_monitor(cifar10_mini):
    """The collated batch names each unlabeled image's class (``target_acc``); with the data in
    memory the views are indices, so the classes can be checked against the source."""
    cfg = small_cfg(cifar10_mini, augment_on="device", device_resident=True)
    data = build_train_data(cfg, 8, 4, 0, 0, 1, torch.device("cpu"))
    (batch,) = first_batches(data, 1)
    index = batch["unlabeled"][0]
    assert index.dtype == torch.long and index.shape == (8,)
    targets = torch.as_tensor(data.loader.dataset.source.targets)
    assert torch.equal(batch["unlabeled_labels"], targets[index])


@pytest.mark.parametrize("resident", [False, True])
def test_a_method_without_unlabeled_loss_loads_no_unlabeled_image(cifar10_mini, resident):
    """The supervised baseline (``uses_unlabeled`` False): same steps per epoch and the same
    labeled images step by step as its method's loader, and no unlabeled image is loaded."""
    from registry import METHODS

    assert METHODS["supervised"].config_cls.uses_unlabeled is False
    assert METHODS["suave"].config_cls.uses_unlabeled and METHODS["daino"].config_cls.uses_unlabeled
    kw = dict(augment_on="device", device_resident=True) if resident else {}
    cfg, dev = small_cfg(cifar10_mini, **kw), torch.device("cpu")
    full = build_train_data(cfg, 8, 4, 3, 0, 1, dev)
    lean = build_train_data(cfg, 8, 4, 3, 0, 1, dev, unlabeled_views=False)
    assert lean.steps_per_epoch == full.steps_per_epoch == len(lean.sampler)
    for a, b in zip(first_batches(full, 3, epoch=1), first_batches(lean, 3, epoch=1)):
        assert b["unlabeled"] == [] and "unlabeled_labels" not in b
        assert torch.equal(a["labels"], b["labels"])
        if resident:  # labeled views are indices here: the very same images
            assert torch.equal(a["labeled"], b["labeled"])
    loads = []
    source = lean.loader.dataset.source
    source.load = lambda i, _load=source.load: loads.append(i) or _load(i)
    first_batches(lean, 2)
    assert set(loads) <= set(lean.labeled_indices.tolist()) and len(loads) == 2 * 4
