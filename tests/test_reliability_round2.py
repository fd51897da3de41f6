"""Issue 17 (reliability, round two): each case has a test that failed before its fix."""

from __future__ import annotations

import collections
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import load_file
from common.data.loaders import SemiSupervisedDataset
from common.data.splits import subset_from_list
from common.errors import UserError
from common.run import prepare_run_dir


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
    assert (pixel, target, bad) == (3, 3, (2,))
    stream, pixel, target, bad = ds[(1, 4, 0, 0)]  # labeled: replaced by the next labeled, 5
    assert (pixel, target, bad) == (5, 5, (4,))
    assert "skipping corrupt image /data/img_4.png" in caplog.text
    source.bad = {1, 4, 5}
    with pytest.raises(UserError, match="every labeled image failed to load"):
        ds[(1, 1, 0, 0)]


# case 7: a label list that is not UTF-8, starts with a byte-order mark, or repeats a line
def _list_fixture(tmp_path, text: bytes):
    path = tmp_path / "labels.txt"
    path.write_bytes(text)
    names = ["n01_1.JPEG", "n01_2.JPEG", "n02_1.JPEG"]
    return path, names, ["n01", "n02"]


@pytest.mark.parametrize("payload", ["n01_1.JPEG\n".encode("utf-16"), b"\xff\xfe\x00\x81\xc3("])
def test_label_list_that_is_not_utf8_is_one_clear_error(tmp_path, payload):
    path, names, classes = _list_fixture(tmp_path, payload)
    with pytest.raises(UserError, match=r"labels.txt is not UTF-8 text"):
        subset_from_list(names, classes, path)


def test_label_list_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    path, names, classes = _list_fixture(tmp_path, "n01_2.JPEG\nn02_1.JPEG\n".encode("utf-8-sig"))
    assert subset_from_list(names, classes, path).tolist() == [1, 2]


def test_label_list_duplicate_line_is_named(tmp_path):
    path, names, classes = _list_fixture(tmp_path, b"n01_1.JPEG\nn02_1.JPEG\nn01_1.JPEG\n")
    pattern = r"line 3: 'n01_1.JPEG' is listed twice \(first at line 1\)"
    with pytest.raises(UserError, match=pattern):
        subset_from_list(names, classes, path)


# case 8: a rejected pickle is "not loaded for safety", never "corrupt" with torch's advice
def test_rejected_pickle_says_not_loaded_and_gives_no_unsafe_advice(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"model": {"w": torch.ones(1)}, "meta": {}, "x": collections.deque([1])}, path)
    with pytest.raises(UserError) as err:
        load_file(path)
    message = str(err.value)
    assert "never loaded" in message or "not loaded for safety" in message, message
    assert "weights_only" not in message and "corrupt" not in message, message


# case 9: --resume with nothing to resume says so in one line
def test_resume_with_nothing_to_resume_is_said(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert prepare_run_dir(tmp_path / "run", {"a": 1}, resume=True) is None
    lines = [r.getMessage() for r in caplog.records if "nothing to resume" in r.getMessage()]
    assert len(lines) == 1 and "starting a new run" in lines[0], caplog.text
