"""Supervised-only baseline: the labeled half of Suave, without any unlabeled loss.

Same backbone, same labeled views, same classifier (projector -> L2 -> unit-norm prototypes,
cosine / temperature; or a plain linear layer) and the same label-smoothed cross-entropy as
Suave's labeled term. Trained by the same engine for the same number of steps, it measures
what the unlabeled images add (``benchmarks/bench_label_efficiency.py``). Its steps are counted
over the unlabeled set, as its method's, but the loader loads and crops no unlabeled image
(``uses_unlabeled``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import load_state_strict, rows_of, select_weights
from common.errors import UserError
from common.losses import labeled_loss, mixed_labels_loss, weighted_total
from common.method import EvalNetwork, Method, StepContext, StepOutput
from common.mixup import MixupConfig, mix_permuted
from common.models.dino_head import DINOHead
from common.models.factory import build_backbone
from common.models.heads import Prototypes, build_projector
from common.run_config import RunConfig


@dataclass
class SupervisedConfig(MixupConfig):
    # "dino": Daino's head (MLP -> L2 -> weight-normalised K-way layer), the baseline for Daino
    head: Literal["prototypes", "linear", "dino"] = "prototypes"
    projector_hidden_dim: int = 2048  # prototypes head only (as suave.projector_hidden_dim)
    embed_dim: int = 128
    head_hidden_dim: int = 2048  # dino head only (as daino.head_*)
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    head_use_bn: bool = False
    norm_last_layer: bool = False
    temperature: float = 0.1  # prototypes head: logits = cosine / temperature
    label_smoothing: float = 0.01
    # labeled mixup / CutMix (MixupConfig) as the methods' (suave.mixup / daino.mixup on the
    # labeled batch): mixed copies of the labeled batch are appended and weigh as much as the
    # clean ones, so a method with labeled mixup is compared with a baseline that has it too

    def validate(self) -> None:
        if self.temperature <= 0 or not 0 <= self.label_smoothing < 1:
            raise UserError("supervised.temperature > 0 and 0 <= label_smoothing < 1")
        self.validate_mixup("supervised")


@dataclass
class SupervisedRunConfig(RunConfig):
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    uses_unlabeled: ClassVar[bool] = False  # only the labeled batch is trained on

    def validate(self) -> None:
        if not self.has_labels:
            raise UserError("the supervised baseline needs labels: train.batch_size_labeled >= 1")


class PrototypeClassifier(nn.Module):
    """Backbone -> projector -> L2-normalise -> prototypes (Suave's network), -> Daino's head,
    or -> Linear."""

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SupervisedConfig, classes: int):
        super().__init__()
        self.backbone = backbone
        self.use_prototypes = cfg.head == "prototypes"
        self.dino_head = None
        if cfg.head == "dino":
            self.dino_head = DINOHead(feat_dim, classes, cfg.head_hidden_dim,
                                      cfg.head_bottleneck_dim, cfg.head_layers, cfg.head_use_bn,
                                      cfg.norm_last_layer)  # fmt: skip
        elif self.use_prototypes:
            self.projector = build_projector(feat_dim, cfg.projector_hidden_dim, cfg.embed_dim)
            self.prototypes = Prototypes(cfg.embed_dim or feat_dim, classes)
        else:
            self.linear = nn.Linear(feat_dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(images)
        if self.dino_head is not None:
            return self.dino_head(feats)
        if not self.use_prototypes:
            return self.linear(feats)
        return self.prototypes(F.normalize(self.projector(feats), dim=1))


# where a checkpoint keeps the classifier's output rows, by ``supervised.head``
_CLASS_ROWS = {"prototypes": "net.prototypes.weight", "linear": "net.linear.weight",
               "dino": "net.dino_head.last_layer.parametrizations.weight.original1"}  # fmt: skip


class Supervised(Method):
    name = "supervised"
    config_cls = SupervisedRunConfig
    backbone_prefix = "net.backbone."

    @classmethod
    def eval_network(
        cls, cfg: SupervisedRunConfig, ckpt: dict, path: str, with_taps: bool = False
    ) -> EvalNetwork:
        """``net`` (backbone and classifier), so that a baseline's features meet the same k-NN,
        linear probe and classifier evaluation as its method's (the baseline has no online
        heads, so ``with_taps`` never comes)."""
        classes = rows_of(ckpt, _CLASS_ROWS[cfg.supervised.head], path, cls.name)
        backbone, feat_dim = build_backbone(cfg.model.backbone, 0.0)
        net = PrototypeClassifier(backbone, feat_dim, cfg.supervised, classes)
        load_state_strict(net, select_weights(ckpt, {"net.": ""}), path, "supervised network")
        return EvalNetwork(net, net.backbone, net, classes)

    def __init__(self, cfg: SupervisedRunConfig, num_classes: int, world_size: int = 1):
        super().__init__()
        self.cfg, self.scfg = cfg, cfg.supervised
        self.num_classes = num_classes
        backbone, feat_dim = build_backbone(
            cfg.model.backbone, cfg.model.drop_path, weights=cfg.model.timm_weights
        )
        self.net = PrototypeClassifier(backbone, feat_dim, self.scfg, num_classes)
        # Cosine(-like) scores need the temperature (Daino divides by its student temperature);
        # a linear head's logits are used as they are.
        cosine = self.scfg.head != "linear"
        self.logit_scale = 1.0 / self.scfg.temperature if cosine else 1.0

    @classmethod
    def build(cls, cfg: SupervisedRunConfig, num_classes: int, world_size: int) -> Supervised:
        if cfg.model.init:
            raise UserError(
                "the supervised baseline trains from scratch (model.init is not supported)"
            )
        return cls(cfg, num_classes, world_size)

    @property
    def trainable(self) -> nn.Module:
        return self.net

    def replace_trainable(self, module: nn.Module) -> None:
        self.net = module

    def meta(self) -> dict:
        return {"method": self.name, "backbone": self.cfg.model.backbone,
                "num_classes": self.num_classes,
                "backbone_prefix": self.backbone_prefix}  # fmt: skip

    def training_step(self, batch: dict, ctx: StepContext) -> StepOutput:
        s, labeled, labels = self.scfg, batch["labeled"], batch["labels"]
        if s.mixup == "none":
            scores = self.forward_trainable(labeled)
        else:  # one forward over clean + mixed copies, as the methods' labeled batch
            mixed, perm, lam = mix_permuted(labeled, labeled, s.mixup, s.mixup_alpha,
                                            ctx.generator, s.mixup_switch_prob)  # fmt: skip
            scores, mixed_scores = self.forward_trainable(torch.cat([labeled, mixed])).chunk(2)
        loss = labeled_loss(scores, labels, 1.0 / self.logit_scale, s.label_smoothing)
        terms = {"loss_labeled": loss}
        if s.mixup != "none":
            terms["loss_labeled_mix"] = mixed_labels_loss(mixed_scores * self.logit_scale, labels,
                                                          perm, lam, self.num_classes,
                                                          s.label_smoothing)  # fmt: skip
            loss = weighted_total([(loss, len(labels)), (terms["loss_labeled_mix"], len(labels))])
        pred = scores.detach().argmax(dim=1)
        acc = float((pred == labels).float().mean()) * 100
        return StepOutput(loss, terms, {"train_labeled_acc": acc})

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        if self.net.use_prototypes:
            self.net.prototypes.normalize_()

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.backbone(images)
