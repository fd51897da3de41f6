"""The configuration sections every training run has; each method adds its own section."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.data import DataConfig
from common.engine import TrainConfig
from common.logging_utils import LogConfig
from common.models.factory import ModelConfig
from common.optim import OptimConfig


@dataclass
class RunConfig:
    """data / model / optim / train / log. Subclass it with one more field named after the
    method (``suave``, ``daino``, ``supervised``): that name is also the YAML section."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
