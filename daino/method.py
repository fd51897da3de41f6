"""Daino = DINO + labels: the teacher's sharpened, centred outputs are the unlabeled targets.

Student and teacher share one architecture (backbone + DINO head with K = number of classes, so
output k is class k). The teacher, an EMA of the student, sees only the unlabeled global crops;
the student sees every crop plus the labeled batch and is the only network trained. Validation
uses the teacher, as DINO does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Literal

import torch
from torch import nn

from common.checkpoint import (
    backbone_prefix_of,
    load_partial,
    load_state_strict,
    open_init_checkpoint,
    rows_of,
    select_weights,
)
from common.errors import UserError
from common.losses import (
    balanced_total,
    labeled_loss,
    mixed_labels_loss,
    rampup_weight,
    target_stats,
    validate_rampup,
)
from common.method import EvalNetwork, Method, StepContext, StepOutput
from common.mixup import MixupConfig, mix_permuted
from common.models.dino_head import DINOHead, cancel_last_layer_gradients
from common.models.ema import ema_update_
from common.models.factory import ModelConfig, build_backbone
from common.models.multicrop import forward_multicrop
from common.models.online_heads import OnlineHeads
from common.models.sync_bn import convert_sync_batchnorm
from common.optim import OptimConfig
from common.run_config import RunConfig
from common.schedules import cosine_schedule
from daino.loss import DainoLoss

log = logging.getLogger(__name__)


@dataclass
class DainoConfig(MixupConfig):
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    head_use_bn: bool = False
    norm_last_layer: bool = False  # the paper's choice: prototype norms are learned
    student_temp: float = 0.1  # also divides the student logits of the labeled CE
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 10
    center_momentum: float = 0.9
    teacher_momentum: float = 0.990  # cosine-increased to teacher_momentum_final
    teacher_momentum_final: float = 1.0
    freeze_last_layer_epochs: int = 1
    # labeled mixup (MixupConfig; official Daino: on, "switch"): mixed copies of the labeled
    # batch are appended and weighted as labeled samples, as in Suave
    label_smoothing: float = 0.0
    init_head: bool = True  # model.init also fills the head (MLP; ours: prototypes and center)
    # DINO file: "student" = the teacher starts as a copy of the loaded student (official Daino);
    # "dino" = load DINO's own teacher weights into the teacher
    init_teacher: Literal["student", "dino"] = "student"
    # 0: one output (prototype) per class. Self-supervised pre-training (no labels) may use
    # more, as DINO's 65536 on ImageNet; with labels, output k must be class k.
    out_dim: int = 0
    # online linear heads (official multihead_eval) on detached student features of the backbone
    # output, the head's last hidden layer and its bottleneck (before the L2 norm), trained on
    # the labeled batch, reported at every validation; never in the method's gradients
    online_heads: bool = False
    # 0: per-sample weighting (paper); else the labeled terms' share of the loss (see Suave's)
    labeled_share: float = 0.0
    # share of the run's steps over which the unlabeled loss ramps up (see Suave's; 0: none)
    unlabeled_rampup: float = 0.0

    def validate(self) -> None:
        if not 0 <= self.labeled_share < 1:
            raise UserError("daino.labeled_share must be in [0, 1) (0: per-sample weighting)")
        validate_rampup("daino", self.unlabeled_rampup)
        self.validate_mixup("daino")
        if min(self.student_temp, self.teacher_temp, self.warmup_teacher_temp) <= 0:
            raise UserError("daino temperatures must be positive")
        if not 0 <= self.center_momentum < 1:
            raise UserError("daino.center_momentum must be in [0, 1)")
        if not 0 <= self.teacher_momentum <= self.teacher_momentum_final <= 1:
            raise UserError("daino needs 0 <= teacher_momentum <= teacher_momentum_final <= 1")
        if self.head_layers < 1 or self.head_bottleneck_dim < 1 or self.head_hidden_dim < 1:
            raise UserError("daino.head_layers, head_hidden_dim, head_bottleneck_dim must be >= 1")
        if self.warmup_teacher_temp_epochs < 0 or self.freeze_last_layer_epochs < 0:
            raise UserError("daino warm-up / freeze epochs must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise UserError("daino.label_smoothing must be in [0, 1)")
        if self.out_dim < 0:
            raise UserError("daino.out_dim must be >= 0 (0: one output per class)")


@dataclass
class DainoRunConfig(RunConfig):
    """DINO's ViT-S/16 defaults: drop-path 0.1, AdamW with a cosine weight-decay schedule."""

    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(backbone="vit_small", drop_path=0.1)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            name="adamw", base_lr=2.4e-4, final_lr=1e-5, warmup_epochs=4, weight_decay=0.04,
            final_weight_decay=0.4,
        )  # fmt: skip
    )
    daino: DainoConfig = field(default_factory=DainoConfig)

    def validate(self) -> None:
        if self.data.num_global + self.data.num_local < 2:
            raise UserError("Daino needs two or more unlabeled crops (data.num_global + num_local)")
        if self.model.init_format == "swav":
            raise UserError("model.init_format 'swav' cannot initialise Daino (use dino or ours)")


class DainoNetwork(nn.Module):
    """Backbone -> DINO head (MLP, L2 norm, weight-normalised K-way last layer)."""

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DainoConfig, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(
            feat_dim, num_classes, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.head_layers,
            cfg.head_use_bn, cfg.norm_last_layer,
        )  # fmt: skip

        # depths the online heads read: backbone output, head's last hidden layer, bottleneck
        self.tap_dims = {"backbone": feat_dim}
        if cfg.head_layers > 1:
            self.tap_dims["hidden"] = cfg.head_hidden_dim
        self.tap_dims["bottleneck"] = cfg.head_bottleneck_dim

    def forward(self, crops: list[torch.Tensor], with_taps: bool = False):
        """Logits of all crops, in input order; ``with_taps`` adds the features at each of
        ``tap_dims``' depths (not detached)."""
        feats = forward_multicrop(self.backbone, crops)
        if not with_taps:
            return self.head(feats)
        logits, taps = self.head(feats, with_taps=True)
        return logits, {"backbone": feats, **taps}


class Daino(Method):
    name = "daino"
    config_cls = DainoRunConfig
    backbone_prefix = "teacher.backbone."  # evaluated and validated: the teacher, as in DINO
    has_student = True

    def __init__(self, cfg: DainoRunConfig, num_classes: int, world_size: int = 1):
        super().__init__()
        self.cfg, self.dcfg = cfg, cfg.daino
        self.num_classes, self.backbone_name = num_classes, cfg.model.backbone
        self.num_prototypes = self.dcfg.out_dim or num_classes
        self.supervised = cfg.has_labels
        if self.supervised and self.num_prototypes != num_classes:
            raise UserError(
                f"daino.out_dim={self.num_prototypes} but the data has {num_classes} classes: "
                "with labels, output k is class k (set out_dim=0)"
            )
        backbone, feat_dim = build_backbone(
            cfg.model.backbone, cfg.model.drop_path, weights=cfg.model.timm_weights
        )
        self.student = DainoNetwork(backbone, feat_dim, self.dcfg, self.num_prototypes)
        teacher_backbone, _ = build_backbone(cfg.model.backbone, 0.0)  # no drop path
        self.teacher = DainoNetwork(teacher_backbone, feat_dim, self.dcfg, self.num_prototypes)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        d = self.dcfg
        self.loss = DainoLoss(
            self.num_prototypes, d.student_temp, d.teacher_temp, d.warmup_teacher_temp,
            d.warmup_teacher_temp_epochs, d.center_momentum, cfg.train.epochs,
        )  # fmt: skip
        self.momentum_schedule = None
        if d.online_heads and self.supervised:  # no labels: nothing to probe with
            # on the student, in training and validation alike: the labeled batch goes through
            # the student only (a teacher pass over it would cost a forward per step)
            self.online_heads = OnlineHeads(self.student.tap_dims, num_classes)

    # ---------------------------------------------------------------- Method API
    @classmethod
    def build(cls, cfg: DainoRunConfig, num_classes: int, world_size: int) -> Daino:
        method = cls(cfg, num_classes, world_size)
        if cfg.model.init:
            method.initialize_from(cfg.model.init, cfg.model.init_format)
        return method

    @classmethod
    def eval_network(
        cls,
        cfg: DainoRunConfig,
        ckpt: dict,
        path: str,
        with_taps: bool = False,
        student: bool = False,
    ) -> EvalNetwork:
        """The teacher (``student``: the student, as DINO users compare both); the online heads
        were trained on the student's features, so ``with_taps`` rebuilds the student as well."""
        key = "teacher.head.last_layer.parametrizations.weight.original1"
        num_protos = rows_of(ckpt, key, path, cls.name)

        def network(prefix: str) -> DainoNetwork:
            backbone, feat_dim = build_backbone(cfg.model.backbone, 0.0)
            net = DainoNetwork(backbone, feat_dim, cfg.daino, num_protos)
            what = "daino network" if prefix == "teacher." else "student"
            load_state_strict(net, select_weights(ckpt, {prefix: ""}), path, what)
            return net

        evaluated = network("student." if student else "teacher.")
        out = EvalNetwork(evaluated, evaluated.backbone, lambda x: evaluated([x]), num_protos)
        if with_taps:
            tapped = evaluated if student else network("student.")
            out.tapped, out.taps = tapped, lambda x: tapped([x], with_taps=True)[1]
        return out

    @property
    def trainable(self) -> nn.Module:
        return self.student

    def modules_to_compile(self) -> list[nn.Module]:
        return [self.student, self.teacher]  # the teacher's forward is ~1/7 of a step

    def replace_trainable(self, module: nn.Module) -> None:
        """The teacher gets the same BN conversion: DINO's teacher normalises globally too."""
        self.student = module
        device = next(self.teacher.parameters()).device
        self.teacher = convert_sync_batchnorm(self.teacher, device)

    def setup(self, epochs: int, steps_per_epoch: int) -> None:
        self.loss.set_epochs(epochs)
        self.momentum_schedule = cosine_schedule(
            self.dcfg.teacher_momentum, self.dcfg.teacher_momentum_final, epochs, steps_per_epoch
        )

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher([images])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.backbone(images)

    def classify_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's prototypes, and the online heads on the student they are trained on."""
        out = super().classify_all(images)
        if self.online_heads is not None:
            out.update(self.online_heads(self.student([images], with_taps=True)[1]))
        return out

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, ctx: StepContext) -> StepOutput:
        crops: list[torch.Tensor] = batch["unlabeled"]
        n_crops, b_u = len(crops), crops[0].shape[0]
        n_global = self.cfg.data.num_global
        labeled = batch.get("labeled")
        b_l = 0 if labeled is None else labeled.shape[0]
        d = self.dcfg
        mix_lab = d.mixup != "none" and b_l > 0
        lab_inputs = [labeled] if b_l else []
        if mix_lab:
            lab_mixed, lab_perm, lab_lam = mix_permuted(
                labeled, labeled, d.mixup, d.mixup_alpha, ctx.generator, d.mixup_switch_prob
            )
            lab_inputs.append(lab_mixed)
        n_lab = b_l * len(lab_inputs)

        # Labeled first, then globals, then locals: same-size inputs share one backbone call.
        inputs = lab_inputs + list(crops)
        heads = self.online_heads if b_l else None
        if heads is not None:
            logits, taps = self.forward_trainable(inputs, with_taps=True)
        else:
            logits = self.forward_trainable(inputs)
        lab_logits, unl_logits = logits[:b_l], logits[n_lab:]
        student = list(unl_logits.split(b_u))
        with torch.no_grad():
            teacher = list(self.teacher(crops[:n_global]).split(b_u))

        loss_unl, probs = self.loss(student, teacher, ctx.epoch)
        terms = {"loss_unlabeled": loss_unl}
        lab_terms = []  # (loss, samples): weighed against the unlabeled crops as in Suave
        if b_l:
            loss_lab = labeled_loss(lab_logits, batch["labels"], self.dcfg.student_temp,
                                    self.dcfg.label_smoothing)  # fmt: skip
            terms["loss_labeled"] = loss_lab
            lab_terms.append((loss_lab, b_l))
        if mix_lab:
            loss_mix = mixed_labels_loss(logits[b_l:n_lab].float() / d.student_temp,
                                         batch["labels"], lab_perm, lab_lam, self.num_classes,
                                         d.label_smoothing)  # fmt: skip
            terms["loss_labeled_mix"] = loss_mix
            lab_terms.append((loss_mix, b_l))
        # per-sample mean over every image the student sees (or labeled_share for the labels)
        weight = rampup_weight(d.unlabeled_rampup, ctx)
        total = balanced_total(lab_terms, [(loss_unl, b_u * n_crops)], d.labeled_share, weight)

        metrics = {
            "teacher_temp": self.loss.teacher_temperature(ctx.epoch),
            "teacher_momentum": float(self.momentum_schedule[ctx.step]),
            # entropy, prototypes used, top probability: tensors, read back on logging steps only
            # + target_acc when output k is class k (with labels)
            **target_stats(
                torch.cat(probs), batch.get("unlabeled_labels") if self.supervised else None
            ),
        }
        if b_l:
            pred = lab_logits.detach().argmax(dim=1)
            metrics["train_labeled_acc"] = (pred == batch["labels"]).float().mean() * 100
        if d.unlabeled_rampup:
            metrics["unlabeled_weight"] = weight
        extra = None
        if heads is not None:  # clean labeled images only, features detached inside the heads
            extra = heads.loss({k: t[:b_l] for k, t in taps.items()}, batch["labels"])
            terms["loss_online_heads"] = extra
        return StepOutput(total, terms, metrics, extra)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        freeze = self.dcfg.freeze_last_layer_epochs
        cancel_last_layer_gradients(self.student.head, ctx.epoch, freeze)

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        ema_update_(self.teacher, self.student, float(self.momentum_schedule[ctx.step]))

    # ---------------------------------------------------------------- initialisation
    def initialize_from(self, path: str, fmt: str = "auto") -> None:
        """Start from an official DINO file (full or backbone-only) or one of our checkpoints."""
        fmt, ckpt = open_init_checkpoint(path, fmt, foreign="dino")
        if fmt == "dino":
            self._init_from_dino(path)
        elif fmt == "ours":
            self._init_from_ours(path, ckpt)
        else:
            raise UserError(f"model.init_format '{fmt}' cannot initialise Daino (use dino or ours)")

    def _init_from_dino(self, path: str) -> None:
        from common.models.pretrained import load_dino_full

        def target(net: DainoNetwork):
            return net if self.dcfg.init_head else SimpleNamespace(backbone=net.backbone)

        reports = load_dino_full(target(self.student), target(self.teacher), path)
        if self.dcfg.init_teacher == "student":  # official: teacher = copy of the student
            self.teacher.load_state_dict(self.student.state_dict())
            reports["teacher"] = "copied from the loaded student"
        for which, report in reports.items():
            log.info("initialised the %s from DINO checkpoint %s", which, report)

    def _init_from_ours(self, path: str, ckpt: dict) -> None:
        method = ckpt.get("meta", {}).get("method")
        meta = ckpt.get("meta", {})
        same_outputs = meta.get("num_prototypes", meta.get("num_classes")) == self.num_prototypes
        if method == "daino":
            parts = ("backbone", "head") if self.dcfg.init_head else ("backbone",)
            sources = {n: {f"{n}.{p}.": f"{p}." for p in parts} for n in ("student", "teacher")}
            if self.dcfg.init_head and not same_outputs:  # e.g. self-supervised -> labels
                log.info("checkpoint %s has another number of outputs: its last layer and "
                         "center are not loaded", path)  # fmt: skip
        elif method in ("suave", "supervised"):  # its backbone starts both networks; heads fresh
            prefix = backbone_prefix_of(ckpt, path)
            sources = {net: {prefix: "backbone."} for net in ("student", "teacher")}
        else:
            raise UserError(f"checkpoint {path} is a {method!r} checkpoint, not Daino, Suave or "
                            "supervised")  # fmt: skip
        for net_name, prefixes in sources.items():
            net = getattr(self, net_name)
            weights = select_weights(ckpt, prefixes)
            if not same_outputs:
                weights = {k: v for k, v in weights.items() if not k.startswith("head.last_layer")}
            load_partial(net, weights, path, f"{net_name} network")
            log.info("initialised %d %s tensors from %s", len(weights), net_name, path)
        center = ckpt["model"].get("loss.center")
        if method == "daino" and self.dcfg.init_head and same_outputs and center is not None:
            if tuple(center.shape) != tuple(self.loss.center.shape):
                raise UserError(f"checkpoint {path}: center has {center.shape[-1]} classes, "
                                f"this run {self.num_classes}")  # fmt: skip
            self.loss.center.copy_(center)
        if self.online_heads is not None and method == "daino":
            self.online_heads.load_matching(ckpt, path)
