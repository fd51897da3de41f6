"""The contract between a method (Suave, Daino) and the shared training engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from common.models.online_heads import OnlineHeads
from common.run_config import RunConfig


@dataclass
class StepContext:
    """Where training stands; handed to every method hook."""

    step: int  # global optimisation step, 0-based
    epoch: int
    iteration: int  # within the epoch
    steps_per_epoch: int
    total_steps: int
    device: torch.device
    generator: torch.Generator  # seeded from (run seed, step): reproducible after a resume


@dataclass
class StepOutput:
    loss: torch.Tensor  # the scalar that is back-propagated
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # named parts, for logs/NaN checks
    # extra monitoring values: floats or 0-dim tensors (read back on logging steps only)
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)
    # back-propagated with ``loss`` but no part of the method's objective (the online heads'
    # cross-entropy on detached features): the logged ``loss`` stays the method's loss
    extra_loss: torch.Tensor | None = None

    @property
    def backward_loss(self) -> torch.Tensor:
        """The scalar the engine back-propagates."""
        return self.loss if self.extra_loss is None else self.loss + self.extra_loss


@dataclass
class EvalNetwork:
    """A method's network as evaluation sees it, rebuilt from a checkpoint (``eval_network``)."""

    module: nn.Module  # the evaluated network, weights loaded
    features: Callable[[torch.Tensor], torch.Tensor]  # images -> backbone features
    classify: Callable[[torch.Tensor], torch.Tensor]  # images -> prototype scores
    num_prototypes: int
    # asked for when the run had online heads: the network they were trained on (``module`` or
    # another one) and images -> its features at the heads' depths
    tapped: nn.Module | None = None
    taps: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None


class Method(nn.Module):
    """A method owns its networks, loss state (queue, center...) and the per-step logic.

    ``trainable`` is the module whose parameters the optimiser updates and that DDP wraps;
    everything else (teacher, queue, center) lives in buffers or frozen modules, so one
    ``state_dict`` captures the whole training state of the method.

    The class also says what the rest of the project needs of the method without an instance:
    its run config (``config_cls``), how a run builds it (``build``), where its checkpoint keeps
    the evaluated backbone (``backbone_prefix``) and how evaluation rebuilds its network from
    a checkpoint (``eval_network``). The registry above ``common/`` looks methods up by ``name``.
    """

    name = "method"
    config_cls: ClassVar[type[RunConfig]]
    backbone_prefix: ClassVar[str] = ""  # state-dict prefix of the backbone evaluation reads
    # a student network beside the evaluated one (Daino): eval_network(..., student=True)
    has_student: ClassVar[bool] = False

    @classmethod
    def build(cls, cfg: RunConfig, num_classes: int, world_size: int) -> Method:
        """The method of a run, its ``model.init`` weights loaded."""
        raise NotImplementedError

    @classmethod
    def eval_network(
        cls, cfg: RunConfig, ckpt: dict, path: str, with_taps: bool = False
    ) -> EvalNetwork | None:
        """The network evaluation probes, rebuilt from one of this method's checkpoints (never
        the training state: queue, optimiser), or None when the method offers none."""
        return None

    def __init__(self):
        super().__init__()
        self._wrapper: nn.Module | None = None  # see forward_through
        # linear probes on detached features (methods with labels set them when asked to)
        self.online_heads: OnlineHeads | None = None

    @property
    def trainable(self) -> nn.Module:
        raise NotImplementedError

    def replace_trainable(self, module: nn.Module) -> None:
        """Swap in a converted trainable network (e.g. SyncBatchNorm); methods override."""
        raise NotImplementedError

    def modules_to_compile(self) -> list[nn.Module]:
        """Networks ``train.compile`` compiles: the trainable one, plus e.g. a teacher."""
        return [self.trainable]

    def forward_through(self, wrapper: nn.Module) -> None:
        """Route ``forward_trainable`` through ``wrapper`` (the Trainer's DDP of ``trainable``).
        Kept out of the module tree, so ``state_dict`` keys stay those of one process."""
        self.__dict__["_wrapper"] = wrapper

    def forward_trainable(self, *args, **kwargs):
        """Call the trainable network, through the Trainer's DDP wrapper when distributed."""
        net = self._wrapper if self._wrapper is not None else self.trainable
        return net(*args, **kwargs)

    def setup(self, epochs: int, steps_per_epoch: int) -> None:
        """Build step-indexed schedules (temperatures, momenta) once the loader is known."""

    def training_step(self, batch: dict, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """After backward, before the update (e.g. freeze prototypes early)."""

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """After the update (e.g. re-normalise prototypes, EMA teacher)."""

    # Set by subclasses: identity of the run, written into checkpoints (see ``meta``).
    backbone_name: str = ""
    num_classes: int = 0
    num_prototypes: int = 0  # outputs of the prototype layer (= num_classes with labels)
    supervised: bool = True  # trained with labels, so prototype k is class k

    @property
    def has_classifier(self) -> bool:
        """Whether ``classify`` gives class logits (False in self-supervised pre-training)."""
        return self.supervised

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits used for validation accuracy."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features used by k-NN / linear-probe evaluation."""
        raise NotImplementedError

    def classify_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Validation logits by classifier: ``"prototypes"`` (``classify``), then each online
        head by its name; methods with heads override it to share one forward pass."""
        return {"prototypes": self.classify(images)}

    def meta(self) -> dict:
        """Identity written into checkpoints and checked on resume."""
        return {"method": self.name, "backbone": self.backbone_name,
                "num_classes": self.num_classes, "num_prototypes": self.num_prototypes,
                "supervised": self.supervised, "backbone_prefix": self.backbone_prefix}  # fmt: skip
