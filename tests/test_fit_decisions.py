"""The training loop's two decisions, as pure functions: when a checkpoint is written and when
validation runs (``Trainer._fit`` only asks them)."""

from __future__ import annotations

from common.engine import should_evaluate, should_save


def saves(last_step: int, spe: int, every_steps: int, every_epochs: int) -> list[int]:
    return [s for s in range(1, last_step + 1) if should_save(s, last_step, spe, every_steps,
                                                              every_epochs)]  # fmt: skip


def evals(last_step: int, spe: int, every_epochs: int) -> list[int]:
    return [s for s in range(1, last_step + 1) if should_evaluate(s, last_step, spe, every_epochs)]


def test_checkpoints_at_epoch_ends_and_the_last_step():
    assert saves(30, 10, 0, 1) == [10, 20, 30]
    assert saves(40, 10, 0, 3) == [30, 40]  # every third epoch, and the end
    assert saves(25, 10, 0, 1) == [10, 20, 25]  # max_steps inside an epoch: the last step


def test_mid_epoch_checkpoints_skip_epoch_ends_that_the_epoch_rule_declines():
    # every 4 steps inside epochs of 10, epochs saved every second one: step 10 is an epoch end
    # (epoch 1, not saved), 20 is saved by the epoch rule, 30 is the last step
    assert saves(30, 10, 4, 2) == [4, 8, 12, 16, 20, 24, 28, 30]
    assert saves(6, 10, 5, 1) == [5, 6]


def test_zero_means_never_for_steps_and_every_epoch_for_epochs():
    assert saves(20, 10, 0, 0) == [10, 20]
    assert evals(20, 10, 0) == [10, 20]


def test_validation_at_every_nth_epoch_end_and_the_last_step_only():
    assert evals(30, 10, 1) == [10, 20, 30]
    assert evals(50, 10, 2) == [20, 40, 50]
    assert evals(25, 10, 1) == [10, 20, 25]
    assert 15 not in evals(40, 10, 1)  # never inside an epoch
