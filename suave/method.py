"""Suave = SwAV + labels: one cross-entropy over the prototype scores of every image.

Unlabeled crops predict the Sinkhorn-Knopp codes of the other global crops (swapped prediction),
labeled images predict their class; prototype k *is* class k, so the prototype scores are the
classifier. The total is the per-sample mean over all images of the step (labeled, unlabeled
crops and mixed copies), which fixes the official code's weighting by number of views.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
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
    soft_cross_entropy,
    target_stats,
    validate_rampup,
)
from common.method import EvalNetwork, Method, StepContext, StepOutput
from common.mixup import MixupConfig, mix_permuted
from common.models.ema import ema_update_
from common.models.factory import build_backbone
from common.models.heads import Prototypes, build_projector
from common.models.multicrop import forward_multicrop
from common.models.online_heads import OnlineHeads
from common.run_config import RunConfig
from common.schedules import cosine_schedule
from suave.loss import swapped_prediction_loss
from suave.queue import EmbeddingQueue
from suave.sinkhorn import sinkhorn_knopp

log = logging.getLogger(__name__)


@dataclass
class SuaveConfig(MixupConfig):
    projector_hidden_dim: int = 2048
    embed_dim: int = 128
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    crops_for_assign: tuple[int, ...] = (0, 1)
    queue_length: int = 3840  # global; each process keeps queue_length / world_size
    queue_start_epoch: int = 0
    # "full" (official SwAV/Suave): the queue joins the assignments only once it is full;
    # "partial": as soon as it holds anything (the pre-fidelity behaviour)
    queue_use: Literal["full", "partial"] = "full"
    label_smoothing: float = 0.01
    freeze_prototypes_steps: int = 0
    use_momentum: bool = False  # SK targets from an EMA copy of the network
    momentum: float = 0.99  # EMA momentum, cosine-increased to momentum_final
    momentum_final: float = 1.0
    # mixup / mixup_alpha / mixup_switch_prob: MixupConfig; which views they mix:
    mixup_on: Literal["labeled", "unlabeled", "both"] = "labeled"
    init_prototypes: bool = False  # load prototypes from model.init (fine-tuning our checkpoint)
    # 0: one prototype per class. Self-supervised pre-training (no labels) may use more, as
    # SwAV's 3000 on ImageNet; with labels, prototype k must be class k.
    num_prototypes: int = 0
    # online linear heads (official multihead_eval) on detached features of the backbone output,
    # the projector's hidden layer (after BN-ReLU) and its output (before the L2 norm), trained
    # on the labeled batch, reported at every validation; never in the method's gradients
    online_heads: bool = False
    # 0: every sample of the step weighs the same (paper); else the labeled terms' share of the
    # total loss (CPU recipes: the per-sample share is ~20 %, which slows the classifier down)
    labeled_share: float = 0.0
    # share of the run's steps over which the unlabeled loss ramps up (sigmoid_rampup; 0: none)
    unlabeled_rampup: float = 0.0

    def validate(self) -> None:
        if not 0 <= self.labeled_share < 1:
            raise UserError("suave.labeled_share must be in [0, 1) (0: per-sample weighting)")
        validate_rampup("suave", self.unlabeled_rampup)
        if self.temperature <= 0 or self.epsilon <= 0:
            raise UserError("suave.temperature and suave.epsilon must be positive")
        self.validate_mixup("suave")
        if self.sinkhorn_iterations < 1:
            raise UserError("suave.sinkhorn_iterations must be at least 1")
        if not self.crops_for_assign:
            raise UserError("suave.crops_for_assign must name at least one global crop")
        if self.num_prototypes < 0:
            raise UserError("suave.num_prototypes must be >= 0 (0: one per class)")
        if self.queue_length < 0 or not 0 <= self.label_smoothing < 1:
            raise UserError("suave.queue_length >= 0 and 0 <= suave.label_smoothing < 1")
        if self.projector_hidden_dim < 0 or self.embed_dim < 0:
            raise UserError("suave.projector_hidden_dim and suave.embed_dim must be >= 0")


@dataclass
class SuaveRunConfig(RunConfig):
    suave: SuaveConfig = field(default_factory=SuaveConfig)

    def validate(self) -> None:
        bad = [i for i in self.suave.crops_for_assign if not 0 <= i < self.data.num_global]
        if bad:
            raise UserError(f"suave.crops_for_assign {bad} must index global crops")
        if self.suave.mixup != "none" and self.suave.mixup_on != "labeled":
            if not {0, 1} <= set(self.suave.crops_for_assign):
                raise UserError("unlabeled mixup mixes global crops 0 and 1: both must be in "
                                "suave.crops_for_assign")  # fmt: skip


class SuaveNetwork(nn.Module):
    """Backbone -> projector -> L2-normalise -> prototypes, over a list of multi-res crops."""

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SuaveConfig, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.projector = build_projector(feat_dim, cfg.projector_hidden_dim, cfg.embed_dim)
        embed_dim = cfg.embed_dim if cfg.embed_dim else feat_dim
        self.prototypes = Prototypes(embed_dim, num_classes)
        # depths the online heads read (the paper's Table 6: backbone / projector layer 1 / 2)
        self.tap_dims = {"backbone": feat_dim}
        if cfg.embed_dim and cfg.projector_hidden_dim:
            self.tap_dims["proj1"] = cfg.projector_hidden_dim
        if cfg.embed_dim:
            self.tap_dims["proj2"] = cfg.embed_dim

    def forward(self, crops: list[torch.Tensor], with_taps: bool = False):
        """Embeddings and scores of all crops, in input order (one backbone call per size);
        ``with_taps`` adds the features at each of ``tap_dims``' depths (not detached)."""
        feats = forward_multicrop(self.backbone, crops)
        taps = {"backbone": feats}
        if isinstance(self.projector, nn.Sequential):  # Linear-BN-ReLU-Linear, run in two parts
            taps["proj1"] = self.projector[:-1](feats)
            out = taps["proj2"] = self.projector[-1](taps["proj1"])
        else:
            out = self.projector(feats)
            if isinstance(self.projector, nn.Linear):
                taps["proj2"] = out
        z = F.normalize(out, dim=1)
        if with_taps:
            return z, self.prototypes(z), taps
        return z, self.prototypes(z)


@dataclass
class StepInputs:
    """One step's network input: every image in one list, where each named part sits in it, and
    the mixup draws ((permutation, lambda) of the labeled and of the unlabeled mix)."""

    b_l: int  # labeled images
    b_u: int  # unlabeled images (per crop)
    n_views: int  # unlabeled crops per image
    tensors: list[torch.Tensor] = field(default_factory=list)
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, length)
    lab_mix: tuple | None = None
    unl_mix: tuple | None = None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.parts[name] = (sum(t.shape[0] for t in self.tensors), tensor.shape[0])
        self.tensors.append(tensor)

    def take(self, name: str, output: torch.Tensor) -> torch.Tensor:
        """The rows of a network output that belong to part ``name``."""
        start, length = self.parts[name]
        return output[start : start + length]


class Suave(Method):
    name = "suave"
    config_cls = SuaveRunConfig
    backbone_prefix = "net.backbone."

    def __init__(self, cfg: SuaveRunConfig, num_classes: int, world_size: int = 1):
        super().__init__()
        self.cfg, self.scfg = cfg, cfg.suave
        backbone, feat_dim = build_backbone(
            cfg.model.backbone, cfg.model.drop_path, weights=cfg.model.timm_weights
        )
        self.num_classes, self.backbone_name = num_classes, cfg.model.backbone
        self.num_prototypes = self.scfg.num_prototypes or num_classes
        self.supervised = cfg.has_labels
        if self.supervised and self.num_prototypes != num_classes:
            raise UserError(f"suave.num_prototypes={self.num_prototypes} but the data has "
                            f"{num_classes} classes: with labels, prototype k is class k "
                            "(set num_prototypes=0)")  # fmt: skip
        self.net = SuaveNetwork(backbone, feat_dim, cfg.suave, self.num_prototypes)
        self.ema: SuaveNetwork | None = None
        if self.scfg.use_momentum:
            self.ema = copy.deepcopy(self.net).requires_grad_(False)
        queue_len = self._queue_length_per_rank(world_size)
        self.queue = None
        if queue_len:
            embed = cfg.suave.embed_dim or feat_dim
            self.queue = EmbeddingQueue(len(self.scfg.crops_for_assign), queue_len, embed)
        self.momentum_schedule = None
        if self.scfg.online_heads and self.supervised:  # no labels: nothing to probe with
            self.online_heads = OnlineHeads(self.net.tap_dims, num_classes)

    def _queue_length_per_rank(self, world_size: int) -> int:
        """Global length rounded down to whole global batches, split across ranks (as SwAV)."""
        global_batch = self.cfg.train.batch_size_unlabeled * world_size
        length = self.scfg.queue_length - self.scfg.queue_length % global_batch
        return length // world_size

    # ---------------------------------------------------------------- Method API
    @classmethod
    def build(cls, cfg: SuaveRunConfig, num_classes: int, world_size: int) -> Suave:
        method = cls(cfg, num_classes, world_size)
        if cfg.model.init:
            method.initialize_from(cfg.model.init, cfg.model.init_format, cfg.model.init_projector)
        return method

    @classmethod
    def eval_network(
        cls, cfg: SuaveRunConfig, ckpt: dict, path: str, with_taps: bool = False
    ) -> EvalNetwork:
        """``net`` (backbone, projector, prototypes); the online heads were trained on it too."""
        num_protos = rows_of(ckpt, "net.prototypes.weight", path, cls.name)
        backbone, feat_dim = build_backbone(cfg.model.backbone, 0.0)
        net = SuaveNetwork(backbone, feat_dim, cfg.suave, num_protos)
        load_state_strict(net, select_weights(ckpt, {"net.": ""}), path, "suave network")
        out = EvalNetwork(net, net.backbone, lambda x: net([x])[1], num_protos)
        if with_taps:
            out.tapped, out.taps = net, lambda x: net([x], with_taps=True)[2]
        return out

    @property
    def trainable(self) -> nn.Module:
        return self.net

    def replace_trainable(self, module: nn.Module) -> None:
        self.net = module

    def modules_to_compile(self) -> list[nn.Module]:
        return [self.net] + ([self.ema] if self.ema is not None else [])

    def setup(self, epochs: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        if self.ema is not None:
            self.momentum_schedule = cosine_schedule(
                self.scfg.momentum, self.scfg.momentum_final, epochs, steps_per_epoch
            )

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.net([images])[1]

    def classify_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.online_heads is None:
            return super().classify_all(images)
        _, scores, taps = self.net([images], with_taps=True)
        return {"prototypes": scores, **self.online_heads(taps)}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.backbone(images)

    # ---------------------------------------------------------------- training
    def _targets_network(self) -> nn.Module:
        return self.ema if self.ema is not None else self.net

    def _queue_in_use(self, epoch: int) -> bool:
        return self.queue is not None and epoch >= self.scfg.queue_start_epoch

    @torch.no_grad()
    def _assignments(self, scores: dict[int, torch.Tensor], use_queue: bool) -> dict:
        """Sinkhorn-Knopp codes of each assignment crop, with the queue as extra context."""
        codes = {}
        weight = self._targets_network().prototypes.weight
        for slot, view in enumerate(self.scfg.crops_for_assign):
            out = scores[view].detach().float()
            batch = out.shape[0]
            ready = use_queue and self.queue.count() >= (
                self.queue.length if self.scfg.queue_use == "full" else 1
            )
            if ready:
                out = torch.cat([self.queue.get(slot) @ weight.t().float(), out])
            # cosine scores (unit embeddings and prototypes): |score| <= 1 is known, so the
            # plain/log choice needs no read-back of the scores
            codes[view] = sinkhorn_knopp(
                out, self.scfg.epsilon, self.scfg.sinkhorn_iterations, last=batch, bound=1.0
            )
        return codes

    def _inputs(self, batch: dict, ctx: StepContext) -> StepInputs:
        """Labeled images (and their mixed copies), global crops, mixed globals, local crops:
        one list in which same-size images stay adjacent for batched backbone calls."""
        s = self.scfg
        crops: list[torch.Tensor] = batch["unlabeled"]
        labeled = batch.get("labeled")
        x = StepInputs(0 if labeled is None else labeled.shape[0], crops[0].shape[0], len(crops))
        mix_lab = s.mixup != "none" and s.mixup_on in ("labeled", "both") and x.b_l > 0
        mix_unl = s.mixup != "none" and s.mixup_on in ("unlabeled", "both")
        if x.b_l:
            x.add("lab", labeled)
            if mix_lab:
                mixed, perm, lam = mix_permuted(labeled, labeled, s.mixup, s.mixup_alpha,
                                                ctx.generator, s.mixup_switch_prob)  # fmt: skip
                x.add("lab_mix", mixed)
                x.lab_mix = (perm, lam)
        num_global = self.cfg.data.num_global
        for v in range(num_global):
            x.add(f"view{v}", crops[v])
        if mix_unl:
            mixed, perm, lam = mix_permuted(crops[0], crops[1], s.mixup, s.mixup_alpha,
                                            ctx.generator, s.mixup_switch_prob)  # fmt: skip
            x.add("unl_mix", mixed)
            x.unl_mix = (perm, lam)
        for v in range(num_global, x.n_views):
            x.add(f"view{v}", crops[v])
        return x

    def _target_views(self, crops, x: StepInputs, view_scores, embeds) -> tuple[dict, dict]:
        """Scores and embeddings the codes are computed from, by assignment crop: the EMA
        network's (``use_momentum``) or the step's own."""
        assign = self.scfg.crops_for_assign
        if self.ema is None:
            return {v: view_scores[v] for v in assign}, {v: x.take(f"view{v}", embeds)
                                                          for v in assign}  # fmt: skip
        with torch.no_grad():
            t_emb, t_scores = self.ema([crops[v] for v in assign])
        return dict(zip(assign, t_scores.split(x.b_u))), dict(zip(assign, t_emb.split(x.b_u)))

    def _terms(self, batch: dict, x: StepInputs, scores, view_scores, codes) -> tuple:
        """Named loss terms, and the (loss, samples) pairs of the labeled and the unlabeled
        side that ``balanced_total`` weighs."""
        s = self.scfg
        loss_unl = swapped_prediction_loss(view_scores, codes, s.temperature)
        terms = {"loss_unlabeled": loss_unl}
        unl_terms, lab_terms = [(loss_unl, x.b_u * x.n_views)], []
        if x.b_l:
            loss_lab = labeled_loss(x.take("lab", scores), batch["labels"], s.temperature,
                                    s.label_smoothing)  # fmt: skip
            terms["loss_labeled"] = loss_lab
            lab_terms.append((loss_lab, x.b_l))
            if x.lab_mix is not None:
                loss = mixed_labels_loss(x.take("lab_mix", scores) / s.temperature,
                                         batch["labels"], *x.lab_mix, self.num_classes,
                                         s.label_smoothing)  # fmt: skip
                terms["loss_labeled_mix"] = loss
                lab_terms.append((loss, x.b_l))
        if x.unl_mix is not None:
            perm, lam = x.unl_mix
            target = lam * codes[0] + (1 - lam) * codes[1][perm]
            loss = soft_cross_entropy(x.take("unl_mix", scores) / s.temperature, target)
            terms["loss_unlabeled_mix"] = loss
            unl_terms.append((loss, x.b_u))
        return terms, lab_terms, unl_terms

    def training_step(self, batch: dict, ctx: StepContext) -> StepOutput:
        x = self._inputs(batch, ctx)
        heads = self.online_heads if x.b_l else None
        if heads is not None:
            embeds, scores, taps = self.forward_trainable(x.tensors, with_taps=True)
        else:
            embeds, scores = self.forward_trainable(x.tensors)
        view_scores = [x.take(f"view{v}", scores) for v in range(x.n_views)]
        target_scores, target_embeds = self._target_views(batch["unlabeled"], x, view_scores,
                                                          embeds)  # fmt: skip
        use_queue = self._queue_in_use(ctx.epoch)
        codes = self._assignments(target_scores, use_queue)
        if use_queue:  # this step's embeddings join the queue after its own codes are made
            self.queue.push([target_embeds[v].detach() for v in self.scfg.crops_for_assign])
        terms, lab_terms, unl_terms = self._terms(batch, x, scores, view_scores, codes)
        weight = rampup_weight(self.scfg.unlabeled_rampup, ctx)
        total = balanced_total(lab_terms, unl_terms, self.scfg.labeled_share, weight)
        # Are the Sinkhorn-Knopp codes informative (entropy far below ln K, many prototypes used,
        # and with prototype k = class k, how often their top class is the image's: target_acc)?
        truth = batch.get("unlabeled_labels") if self.supervised else None
        metrics = target_stats(torch.cat(list(codes.values())), truth)
        if self.scfg.unlabeled_rampup:
            metrics["unlabeled_weight"] = weight
        if x.b_l:
            pred = x.take("lab", scores).detach().argmax(dim=1)
            # a tensor: read back on logging steps only (no host sync per step)
            metrics["train_labeled_acc"] = (pred == batch["labels"]).float().mean() * 100
        extra = None
        if heads is not None:  # clean labeled images only, features detached inside the heads
            extra = heads.loss({k: x.take("lab", t) for k, t in taps.items()}, batch["labels"])
            terms["loss_online_heads"] = extra
        return StepOutput(total, terms, metrics, extra)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        if ctx.step < self.scfg.freeze_prototypes_steps:
            self.net.prototypes.weight.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        self.net.prototypes.normalize_()
        if self.ema is not None:
            # BN running statistics are copied from the student rather than averaged.
            ema_update_(self.ema, self.net, float(self.momentum_schedule[ctx.step]), True)
            self.ema.prototypes.normalize_()

    # ---------------------------------------------------------------- initialisation
    def initialize_from(self, path: str, fmt: str, load_projector: bool) -> None:
        """Start from an official SwAV checkpoint or one of ours (never foreign prototypes)."""
        fmt, ckpt = open_init_checkpoint(path, fmt, foreign="swav")
        if fmt == "swav":
            from common.models.pretrained import load_swav_backbone

            report = load_swav_backbone(self.net, path, load_projector=load_projector)
            log.info("initialised from SwAV checkpoint %s: %s", path, report)
        elif fmt == "ours":
            self._init_from_ours(path, ckpt, load_projector)
        else:
            raise UserError(f"model.init_format '{fmt}' cannot initialise Suave (use swav or ours)")
        if self.ema is not None:
            self.ema.load_state_dict(self.net.state_dict())

    def _init_from_ours(self, path: str, ckpt: dict, load_projector: bool) -> None:
        """The backbone of any of our checkpoints, wherever its meta says it is (Daino: the
        teacher's, the network it evaluates); projector and prototypes on request, from a file
        that holds Suave's (Suave's own, or the baseline's prototype head)."""
        meta = ckpt.get("meta", {})
        method = meta.get("method")
        prefix = backbone_prefix_of(ckpt, path) if method is not None else self.backbone_prefix
        prefixes = {prefix: "backbone."}
        parts = {"projector": "model.init_projector"} if load_projector else {}
        if self.scfg.init_prototypes:
            theirs = meta.get("num_prototypes", meta.get("num_classes"))
            if theirs != self.num_prototypes:
                raise UserError(f"suave.init_prototypes: checkpoint {path} has {theirs} "
                                f"prototypes, this run {self.num_prototypes}")  # fmt: skip
            parts["prototypes"] = "suave.init_prototypes"
        for part, flag in parts.items():
            if not any(key.startswith(f"net.{part}.") for key in ckpt["model"]):
                raise UserError(f"checkpoint {path} ({method or 'ours'}) has no Suave {part} "
                                f"to load: set {flag}=false")  # fmt: skip
            prefixes[f"net.{part}."] = f"{part}."
        weights = select_weights(ckpt, prefixes)
        if not weights:
            raise UserError(f"checkpoint {path} holds no Suave/SwAV network weights")
        load_partial(self.net, weights, path, "network")
        log.info("initialised %d tensors from %s", len(weights), path)
        if self.online_heads is not None and method in (None, self.name):
            self.online_heads.load_matching(ckpt, path)
