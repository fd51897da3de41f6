"""The configuration sections every training run has; each method adds its own section.

The engine reads ``train`` (TrainConfig, here so that the engine can take the whole typed run
config without an import circle)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

from common.data import DataConfig
from common.errors import UserError
from common.logging_utils import LogConfig
from common.models.factory import ModelConfig
from common.optim import OptimConfig

# auto: bf16 where the device computes it natively, else fp32 (engine.resolve_precision)
Precision = Literal["fp32", "bf16", "fp16", "auto"]
PRECISIONS = get_args(Precision)  # for the command-line tools' --precision


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size_unlabeled: int = 64  # per process
    batch_size_labeled: int = 32  # per process
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: Precision = "fp32"
    channels_last: bool = False
    # "swapped": on a CPU under bf16, convolutions with <= 16 output pixels compute their weight
    # gradient as a convolution of the input by the output gradient (common/models/
    # small_conv_wgrad.py; oneDNN's own is 3-7x slower there). A rule, not a timing: resumable.
    # "auto": swapped on a CPU with AMX (where it was measured faster), native elsewhere.
    small_conv_wgrad: Literal["native", "swapped", "auto"] = "native"
    compile: bool = False  # torch.compile the trainable network and any teacher/EMA copy
    cudnn_benchmark: bool = True  # CUDA: autotune conv kernels (multi-crop shapes are fixed)
    # CUDA fp32 matmuls: "high" allows TF32 tensor cores (~2x faster fp32 ViT steps, 10-bit
    # mantissa); "highest" is torch's exact default.
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    sync_bn: bool = True
    max_steps: int = 0  # stop early after this many global steps (0 = run all epochs)
    checkpoint_every_steps: int = 0  # 0: only at the end of epochs
    checkpoint_every_epochs: int = 1
    keep_checkpoints: int = 3
    eval_every_epochs: int = 1
    eval_batch_size: int = 256
    dist_timeout_s: float = 1800.0
    # several processes: the preemption flag is all-reduced (a collective and a host sync) every
    # N steps and at every step that logs, saves or ends an epoch; N x step time must stay well
    # under the signal's lead time (the launcher's --signal_seconds, 120 s)
    preempt_check_every: int = 10

    def validate(self) -> None:
        if self.epochs < 1:
            raise UserError("train.epochs must be at least 1")
        if self.batch_size_unlabeled < 1 or self.batch_size_labeled < 0:
            raise UserError("train.batch_size_unlabeled must be >= 1, batch_size_labeled >= 0")
        if self.max_steps < 0 or self.checkpoint_every_steps < 0 or self.keep_checkpoints < 1:
            raise UserError("train.max_steps/checkpoint_every_steps >= 0, keep_checkpoints >= 1")
        if self.eval_batch_size < 1 or self.dist_timeout_s <= 0:
            raise UserError("train.eval_batch_size must be >= 1 and train.dist_timeout_s > 0")
        if self.preempt_check_every < 1:
            raise UserError("train.preempt_check_every must be >= 1")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):  # not silently the CPU
            raise UserError(f"train.device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass
class RunConfig:
    """data / model / optim / train / log. Subclass it with one more field named after the
    method (``suave``, ``daino``, ``supervised``): that name is also the YAML section."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Whether the method trains on unlabeled crops. A method that does not (the supervised-only
    # baseline) still steps once per unlabeled batch, so its step count is its method's, but the
    # loader never loads, crops or augments images nobody looks at.
    uses_unlabeled: ClassVar[bool] = True

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
