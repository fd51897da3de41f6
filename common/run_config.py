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

    def __post_init__(self) -> None:
        # Labels or not is settled here, once, as the config is loaded: data.labels_per_class=0
        # is plain SwAV / DINO pre-training whatever labeled batch the recipe names. The saved
        # config.yaml holds the resolved value, so a resume compares like with like.
        if self.data.labels_per_class == 0:
            self.train.batch_size_labeled = 0

    @property
    def has_labels(self) -> bool:
        """Whether the run trains with labels (then prototype k is class k): what the data,
        the methods and evaluation all read."""
        return self.train.batch_size_labeled > 0
