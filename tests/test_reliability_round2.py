"""Issue 17 (reliability, round two): each case has a test that failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.data.loaders import SemiSupervisedDataset
from common.errors import UserError


class _Source:
    """Images whose pixel value is the index; indices in ``bad`` are corrupt."""

    def __init__(self, targets, bad=()):
        self.targets = np.asarray(targets, dtype=np.int64)
        self.bad = set(bad)
        self.names = [f"img_{i}" for i in range(len(targets))]
        self.paths = [f"/data/{n}.png" for n in self.names]
        self.classes = [str(c) for c in sorted(set(targets))]

    def __len__(self):
        return len(self.targets)

    def load(self, index):
        if index in self.bad:
            raise UserError(f"corrupt image file {self.paths[index]}: truncated")
        return Image.new("RGB", (4, 4), (index, index, index))


def _identity(img, rng):
    return np.asarray(img)[0, 0, 0]


# case 2: the label of a skipped image must not be given to its replacement
def test_skip_returns_the_label_of_the_image_returned(caplog):
    source = _Source([0, 1, 2, 3, 4, 5], bad={2, 4})
    ds = SemiSupervisedDataset(
        source, _identity, _identity, seed=0, bad_images="skip", labeled_indices=[1, 4, 5]
    )
    stream, pixel, target, bad = ds[(0, 2, 0, 0)]  # unlabeled: replaced by image 3
    assert (pixel, target, bad) == (3, 3, 1)
    stream, pixel, target, bad = ds[(1, 4, 0, 0)]  # labeled: replaced by the next labeled, 5
    assert (pixel, target, bad) == (5, 5, 1)
    assert "skipping corrupt image /data/img_4.png" in caplog.text
    source.bad = {1, 4, 5}
    with pytest.raises(UserError, match="every labeled image failed to load"):
        ds[(1, 1, 0, 0)]
