"""The one training loop shared by Suave and Daino (DINO's ``train_one_epoch``, made reusable).

batch -> method.training_step -> finite check -> (scaled) backward -> clip -> step -> hooks
-> log -> checkpoint; validation each epoch. Schedules are arrays indexed by the global step, so
resuming at step s reproduces the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from common import dist
from common.accuracy import evaluate_classifiers
from common.checkpoint import (
    STABLE,
    check_compatible,
    first_non_finite,
    is_sane,
    load_state_strict,
    max_abs_weight,
    save_checkpoint,
    weight_limit,
)
from common.config import to_dict
from common.data.device_aug import aug_generator
from common.data.loaders import stop_workers
from common.errors import NonFiniteLossError, UserError
from common.logging_utils import MetricsCSV, WandbLogger
from common.method import Method, StepContext
from common.models.online_heads import head_param_groups, metric_names
from common.models.small_conv_wgrad import use_small_conv_wgrad
from common.models.sync_bn import convert_sync_batchnorm
from common.optim import build_optimizer, param_groups
from common.plots import plot_run_quietly
from common.preemption import PreemptionFlag, requeue_slurm_job
from common.progress import ProgressBar
from common.run_config import RunConfig
from common.schedules import cosine_schedule

log = logging.getLogger(__name__)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def fault_injection_hook(step: int) -> None:
    """Test-only fault injection, off unless ``SUAVEDAINO_TEST_KILL_AT_STEP=<step>[:<rank>]`` is
    set: the process (or only that rank) SIGKILLs itself once ``step`` steps and their checkpoints
    are done, like a crashed node. The resume and distributed-fault tests rely on it.
    ``SUAVEDAINO_TEST_USR1_AT_STEP`` sends SIGUSR1 instead (a preemption signal)."""
    for var, sig in (("KILL", signal.SIGKILL), ("USR1", signal.SIGUSR1)):
        spec = os.environ.get(f"SUAVEDAINO_TEST_{var}_AT_STEP")
        if spec:
            at, _, who = spec.partition(":")
            if step == int(at) and (not who or int(who) == dist.rank()):
                os.kill(os.getpid(), sig)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags from ``cpuinfo`` (Linux); empty where it cannot be read."""
    try:
        return set(cpuinfo.read_text().split())
    except OSError:  # not Linux: no cheap way to tell
        return set()


def resolve_small_conv_wgrad(
    setting: str, device_type: str = "cpu", cpuinfo: Path = Path("/proc/cpuinfo")
) -> str:
    """``auto``: ``swapped`` when training on a CPU with AMX (``amx_bf16``), the only kind it was
    measured faster on (RESULTS.md part 16: -9 % per demo step), else ``native``. A rule on the
    machine, as ``precision: auto`` is: a run resumed on a CPU of another kind may take the other
    kernel (same values up to bf16 rounding)."""
    if setting != "auto":
        return setting
    amx = device_type == "cpu" and "amx_bf16" in cpu_flags(cpuinfo)
    return "swapped" if amx else "native"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX, ARM BF16). oneDNN's
    own check also says yes on AVX512 CPUs that only emulate bf16, where it is no faster, so on
    x86 the flags in ``cpuinfo`` decide."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return True  # ARM: oneDNN's check is the BF16 extension itself
    flags = cpu_flags(cpuinfo)  # empty off Linux: no cheap way to tell, so no
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast where the device computes bf16 natively (CUDA with bf16, a CPU
    with AVX512-BF16 / AMX / ARM BF16), else fp32. bf16 needs no loss scaling; the losses and
    Sinkhorn-Knopp run in fp32 either way. Measured 1.5x faster CPU training steps (RESULTS.md)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def agreed_precision(precision: str, device: torch.device) -> str:
    """``resolve_precision``, the same on every rank: with ``auto`` on machines that differ (one
    node's CPU or GPU computes bf16 natively, another's does not), each process would otherwise
    pick its own, and the ranks would train one model in two precisions. bf16 only where all of
    them can; explicit values are never changed. A collective: every rank calls it."""
    local = resolve_precision(precision, device)
    if precision != "auto" or not dist.is_dist():
        return local
    flag = torch.tensor([1.0 if local == "bf16" else 0.0], device=device)
    agreed = "bf16" if dist.all_reduce_(flag, "min").item() > 0 else "fp32"
    if agreed != local:
        log.info("precision auto: %s here, %s on all ranks (another rank lacks native bf16)",
                 local, agreed)  # fmt: skip
    return agreed


def autocast_context(precision: str, device: torch.device):
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def batch_to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def move(x):
        if isinstance(x, torch.Tensor):
            x = x.to(device, non_blocking=True)
            return x.contiguous(memory_format=fmt) if x.ndim == 4 else x
        if isinstance(x, list):
            return [move(v) for v in x]
        return x

    return {k: move(v) for k, v in batch.items()}


def finite_flags(out) -> tuple[list[str], torch.Tensor]:
    """Names and on-device finite flags of a step's loss terms (the total last)."""
    values = {**out.terms, "loss": out.loss}  # name the culprit term before the total
    flags = torch.stack([torch.isfinite(v.detach().float()).all() for v in values.values()])
    return list(values), flags


def raise_first_non_finite(pending: list, world: int, advice: Callable[[], str]) -> None:
    """Stop at the first non-finite term of ``pending`` [(step, names, flags)], on all ranks;
    the message ends with ``advice()`` (where to go back to)."""
    if not pending:
        return
    flags = torch.cat([f for _, _, f in pending])
    if world > 1:  # all ranks stop together instead of waiting for a dead one
        flags = dist.all_reduce_(flags.float(), "min") > 0
    if bool(flags.all()):
        return
    first = int((~flags).nonzero()[0])
    for step, names, _ in pending:
        if first < len(names):
            raise NonFiniteLossError(
                f"non-finite {names[first]} at step {step}: training stopped; {advice()}"
            )
        first -= len(names)


def should_save(
    step: int, last_step: int, steps_per_epoch: int, every_steps: int, every_epochs: int
) -> bool:
    """Whether a checkpoint follows ``step`` steps done: always at the last step; at an epoch's
    end when the epoch count is a multiple of ``every_epochs``; inside an epoch every
    ``every_steps`` steps (0: never)."""
    if step == last_step:
        return True
    if step % steps_per_epoch == 0:
        return (step // steps_per_epoch) % max(every_epochs, 1) == 0
    return bool(every_steps) and step % every_steps == 0


def should_evaluate(step: int, last_step: int, steps_per_epoch: int, every_epochs: int) -> bool:
    """Whether validation follows ``step`` steps done: at the last step, and at the end of every
    ``every_epochs``-th epoch (never inside an epoch)."""
    if step == last_step:
        return True
    return step % steps_per_epoch == 0 and (step // steps_per_epoch) % max(every_epochs, 1) == 0


class Trainer:
    """Owns optimiser, scaler, schedules, logging and checkpoints of one run."""

    def __init__(
        self,
        method: Method,
        train_data,
        val_loader,
        run_cfg: RunConfig,
        device: torch.device,
        run_dir: Path,
        wandb_logger: WandbLogger | None = None,
    ):
        self.method, self.data, self.val_loader = method, train_data, val_loader
        train_cfg, optim_cfg = run_cfg.train, run_cfg.optim
        self.cfg, self.optim_cfg, self.log_cfg, self.device = (
            train_cfg,
            optim_cfg,
            run_cfg.log,
            device,
        )
        self.run_dir, self.config_dict = Path(run_dir), to_dict(run_cfg)  # saved in checkpoints
        self.print_every = max(1, self.log_cfg.print_every)
        self.wandb = wandb_logger
        self.world = dist.world_size()
        self.spe = train_data.steps_per_epoch
        self.total_steps = train_cfg.epochs * self.spe
        self.precision = agreed_precision(train_cfg.precision, device)
        if train_cfg.precision == "auto":
            log.info("train.precision auto -> %s on %s", self.precision, device.type)
        self.amp = autocast_context(self.precision, device)
        self._prepare_model()
        groups = param_groups(method.trainable, exclude_bias_norm=optim_cfg.excludes_bias_norm)
        if method.online_heads is not None:  # same optimiser and lr schedule, no weight decay
            groups += head_param_groups(method.online_heads, optim_cfg.name == "lars",
                                        optim_cfg.excludes_bias_norm)  # fmt: skip
        self.optimizer = build_optimizer(optim_cfg, groups, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        global_batch = train_cfg.batch_size_unlabeled * self.world
        peak = optim_cfg.peak_lr(global_batch)
        self.lr_schedule = cosine_schedule(
            peak, optim_cfg.final_lr, train_cfg.epochs, self.spe, optim_cfg.warmup_epochs,
            optim_cfg.start_warmup_lr,
        )  # fmt: skip
        final_wd = optim_cfg.final_weight_decay
        self.wd_schedule = cosine_schedule(
            optim_cfg.weight_decay, optim_cfg.weight_decay if final_wd is None else final_wd,
            train_cfg.epochs, self.spe,
        )  # fmt: skip
        method.setup(train_cfg.epochs, self.spe)
        self.start_step = 0
        self.want_grad_norm = False
        self.last_grad_norm: torch.Tensor | None = None
        self.step_csv = MetricsCSV(self.run_dir / "metrics_step.csv") if dist.is_main() else None
        self.epoch_csv = MetricsCSV(self.run_dir / "metrics_epoch.csv") if dist.is_main() else None
        self.preempt = PreemptionFlag()
        # Health record of each checkpoint (issue 17): max |w| against that of the start weights
        self.health_ref = max_abs_weight(method.trainable.parameters())
        self.stable_step: int | None = None  # step of checkpoints/stable.pth, if sane weights
        self.last_loss = None
        self.val_seconds: float | None = None
        # (step, term names, device flags) of steps whose finite check is not yet read back
        self._pending_finite: list[tuple[int, list[str], torch.Tensor]] = []
        log.info(
            "steps/epoch %d, total %d, global batch %d unlabeled + %d labeled, peak lr %.4g",
            self.spe, self.total_steps, global_batch, train_cfg.batch_size_labeled * self.world,
            peak,
        )  # fmt: skip

    # ----------------------------------------------------------------------------- set-up
    def _prepare_model(self) -> None:
        method, cfg = self.method, self.cfg
        method.to(self.device)
        if cfg.channels_last:
            method.to(memory_format=torch.channels_last)
        wgrad = resolve_small_conv_wgrad(cfg.small_conv_wgrad, self.device.type)
        if cfg.small_conv_wgrad == "auto":
            log.info("train.small_conv_wgrad auto -> %s", wgrad)
        if wgrad == "swapped":  # a no-op off the CPU or without bf16 autocast
            use_small_conv_wgrad(method)
        if self.world > 1 and cfg.sync_bn:
            method.replace_trainable(convert_sync_batchnorm(method.trainable, self.device))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
            torch.set_float32_matmul_precision(cfg.matmul_precision)
        if cfg.compile:
            for module in method.modules_to_compile():
                module.compile()
        self.ddp = None  # the Trainer's: the method only calls through it
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(method.trainable, ids)
            method.forward_through(self.ddp)

    def checkpoint_meta(self) -> dict:
        meta = dict(self.method.meta())
        classes = getattr(self.data, "classes", None)
        if classes is not None:  # names and order: evaluate.py refuses data that differ
            meta["classes"] = [str(c) for c in classes]
        return meta

    def load_state(self, ckpt: dict, path: Path) -> None:
        """Restore model, optimiser, scaler and the step to continue from."""
        check_compatible(ckpt, self.checkpoint_meta(), path)
        load_state_strict(self.method, ckpt["model"], path, "model")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as err:
            raise UserError(f"checkpoint {path}: optimizer state does not fit: {err}") from None
        self.scaler.load_state_dict(ckpt.get("scaler", {}))
        self.start_step = int(ckpt["step"])
        health = ckpt.get("health") or {}
        self.health_ref = float(health.get("ref_max_abs", self.health_ref))
        self.stable_step = self.start_step  # only sane checkpoints are resumed from
        for csv in (self.step_csv, self.epoch_csv):  # rows of steps the checkpoint has not seen
            if csv is not None:
                csv.truncate_after(self.start_step)
        log.info("resumed from %s at step %d", path, self.start_step)

    def save(self, next_step: int) -> None:
        """All ranks reach here together; rank 0 writes (training state is identical).

        Non-finite weights (an update from inf gradients) are refused on every rank, so the last
        good checkpoint is never replaced by a poisoned one.
        """
        self._flush_finite_checks()  # a non-finite loss since the last check is named first
        bad = first_non_finite(self.method.state_dict())
        flag = torch.tensor([0.0 if bad is None else 1.0], device=self.device)
        if self.world > 1:
            dist.all_reduce_(flag, "max")
        if flag.item() > 0:
            raise NonFiniteLossError(
                f"non-finite weights ({bad or 'on another rank'}) after step {next_step - 1}: "
                f"training stopped; {self._stable_advice()}"
            )
        health = {
            "max_abs_weight": max_abs_weight(self.method.trainable.parameters()),
            "ref_max_abs": self.health_ref,
            "loss": None if self.last_loss is None else float(self.last_loss),
        }
        if is_sane(health):
            self.stable_step = next_step
        else:  # same on every rank: the weights are identical
            log.warning(
                "weights are exploding after step %d (max |w| %.3g > %.3g): %s stays at step %s",
                next_step - 1, health["max_abs_weight"], weight_limit(self.health_ref), STABLE,
                self.stable_step,
            )  # fmt: skip
        if dist.is_main():
            state = {
                "model": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": next_step,
                "epoch": next_step // self.spe,
                "meta": self.checkpoint_meta(),
                "config": self.config_dict,
                "health": health,
            }
            path = save_checkpoint(
                state, self.run_dir / "checkpoints", next_step, self.cfg.keep_checkpoints
            )
            log.info("saved %s", path)
        dist.barrier()

    def _stable_advice(self) -> str:
        """Where to go back to after a divergence, and how (the NaN messages end with it)."""
        if self.stable_step is None:
            return "no checkpoint with sane weights was written yet (lower optim.base_lr)"
        return (
            f"the last good checkpoint (sane weights) is {self.run_dir / 'checkpoints' / STABLE} "
            f"(step {self.stable_step}); --resume goes back to it, add --override_on_resume "
            "optim.base_lr=<lower> (or use fp32)"
        )

    # ----------------------------------------------------------------------------- loop
    def _set_schedules(self, step: int) -> None:
        lr, wd = float(self.lr_schedule[step]), float(self.wd_schedule[step])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group.get("apply_wd", True):
                group["weight_decay"] = wd

    def _check_finite(self, out, step: int) -> None:
        """Check one step's loss terms now (reads them back: a host sync)."""
        raise_first_non_finite([(step, *finite_flags(out))], self.world, self._stable_advice)

    def _flush_finite_checks(self) -> None:
        """Read back the finite flags of the steps since the last flush: one host sync and one
        collective for all of them, on logging steps and before any save (see train_step)."""
        pending, self._pending_finite = self._pending_finite, []
        raise_first_non_finite(pending, self.world, self._stable_advice)

    def _preemption_requested(self, step: int, boundary: bool) -> bool:
        """Whether any rank got the signal. With several processes, only at ``boundary`` steps
        (log, save, epoch end) and every ``train.preempt_check_every`` steps, which all ranks
        reach together: elsewhere no rank looks, so none stops alone."""
        if self.world == 1:
            return bool(self.preempt.requested)  # a Python flag: no tensor, no sync
        if not boundary and step % self.cfg.preempt_check_every:
            return False
        flag = torch.tensor([1.0 if self.preempt.requested else 0.0]).to(self.device)
        dist.all_reduce_(flag, "max")
        return bool(flag.item() > 0)

    def train_step(self, batch: dict, ctx: StepContext):
        """One optimisation step. With ``self.want_grad_norm`` (set by the loop on steps that
        are logged) the total gradient norm before clipping is kept in ``self.last_grad_norm``:
        it costs a pass over the gradients, and a synchronisation when read."""
        cfg = self.cfg
        grad_norm, self.last_grad_norm = self.want_grad_norm, None
        self._set_schedules(ctx.step)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=ctx.generator)))
        batch = batch_to_device(batch, self.device, cfg.channels_last)
        device_transform = getattr(self.data, "device_transform", None)
        if device_transform is not None:  # data.augment_on=device (issue 16)
            batch = device_transform(batch, aug_generator(cfg.seed, ctx.step))
        with self.amp():
            out = self.method.training_step(batch, ctx)
        # no host sync here: the flags stay on the device until the next logging step or save,
        # which still stop the run naming the first non-finite step and keep the last good save
        self._pending_finite.append((ctx.step, *finite_flags(out)))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.backward_loss).backward()
        if self.method.online_heads is not None:
            self.method.online_heads.sync_gradients()
        self.method.before_optimizer_step(ctx)
        if self.optim_cfg.clip_grad > 0 or grad_norm:
            self.scaler.unscale_(self.optimizer)  # norms of the true gradients, not scaled ones
            params = [p for p in self.method.trainable.parameters() if p.grad is not None]
            if self.optim_cfg.clip_grad > 0:
                norm = nn.utils.clip_grad_norm_(params, self.optim_cfg.clip_grad)
            else:
                norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params]
                norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
            self.last_grad_norm = norm.detach() if grad_norm else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step(ctx)
        return out

    def _log_step(
        self, out, ctx: StepContext, images_per_s: float, data_wait: float, num_bad: int
    ) -> None:
        """One row of ``metrics_step.csv`` (and wandb ``train/...``) after step ``ctx.step``.

        ``step`` in every row, checkpoint and summary counts the optimisation steps done, so the
        row logged after the step that a checkpoint ends with carries that checkpoint's step.
        ``data_wait``: share of the wall time spent waiting for the loader (0: never starved;
        near 1: add ``data.num_workers``). ``bad_images`` (with ``data.bad_images=skip``): how many
        distinct corrupt files were skipped since the run started or resumed."""
        names = ["loss", *out.terms]
        values = torch.stack(
            [out.loss.detach().float(), *[v.detach().float() for v in out.terms.values()]]
        )
        dist.all_reduce_(values, "mean")
        row = {"step": ctx.step + 1, "epoch": ctx.epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({n: float(v) for n, v in zip(names, values.cpu())})
        row["weight_decay"] = float(self.wd_schedule[ctx.step])
        if self.last_grad_norm is not None:
            row["grad_norm"] = float(self.last_grad_norm)
        # method-provided (Daino: teacher_temp, teacher_momentum); tensors are read back here
        row.update({k: float(v) for k, v in out.metrics.items()})
        row["images_per_s"] = images_per_s
        row["data_wait"] = data_wait
        if num_bad:
            row["bad_images"] = num_bad
        if dist.is_main():
            self.step_csv.write(row)
            if self.wandb:
                self.wandb.log_row("train", row)
            log.info(
                "ep %d it %d/%d step %d | %s | lr %.4g | %.1f img/s, data wait %.0f%%",
                ctx.epoch, ctx.iteration + 1, self.spe, row["step"],
                " ".join(f"{n} {row[n]:.4f}" for n in names), row["lr"], images_per_s,
                100 * data_wait,
            )  # fmt: skip

    def evaluate(self, epoch: int, step: int) -> dict:
        if self.val_loader is None or not self.method.has_classifier:
            return {}  # self-supervised: evaluate.py gives k-NN / linear-probe accuracy
        heads = self.method.online_heads
        names = ["prototypes", *(heads.names if heads is not None else [])]
        self.method.eval()
        results = evaluate_classifiers(self.method.classify_all, names, self.val_loader,
                                       self.device, self.amp)  # fmt: skip
        self.method.train()
        top = results.pop("prototypes")
        row = {"val_top1": top["top1"], "val_top5": top["top5"]}
        for name, result in results.items():
            top1, top5 = metric_names(name)
            row.update({top1: result["top1"], top5: result["top5"]})
        heads_text = "".join(f" | head {n} top1 {r['top1']:.2f}" for n, r in results.items())
        log.info("epoch %d val top1 %.2f top5 %.2f%s", epoch, top["top1"], top["top5"],
                 heads_text)  # fmt: skip
        return row

    def fit(self) -> dict:
        """Train to the last step, then (or on any exception, before it propagates) stop the
        loader workers: left to interpreter exit, their shutdown can hang a finished process
        (seen as a Slurm task that never ended after its run had finished)."""
        self._iterator = None
        try:
            return self._fit()
        finally:
            stop_workers(self.data.loader, self._iterator)  # exit promptly, never hang
            if self.val_loader is not None:
                stop_workers(self.val_loader)

    def _fit(self) -> dict:
        last_step = self.last_step()
        step = self.start_step
        summary: dict = {}
        if step == 0:  # a fresh start over a failed run's files: its rows must not stay
            for csv in (self.step_csv, self.epoch_csv):
                if csv is not None:
                    csv.truncate_after(-1)
        self.method.train()
        self._bad_images: set[int] = set()  # corrupt files skipped (bad_images=skip), each once
        while step < last_step:
            epoch = step // self.spe
            step, preempted = self._train_epoch(step, last_step)
            if preempted:
                summary["preempted"] = True
                return summary
            summary.update(self._end_epoch(epoch, step, last_step))
        summary["step"] = step
        summary["steps_per_epoch"] = self.spe  # scripts/demo.py sizes its runs with it
        if self.val_seconds is not None:  # wall seconds of the last validation (demo.py's too)
            summary["val_seconds"] = round(self.val_seconds, 3)
        log.info("finished at step %d: %s", step, summary)
        if dist.is_main() and self.log_cfg.plots:
            plot_run_quietly(self.run_dir)
        return summary

    def last_step(self) -> int:
        """Where training stops: the end of the last epoch, or ``train.max_steps`` before it."""
        max_steps = self.cfg.max_steps
        return self.total_steps if not max_steps else min(max_steps, self.total_steps)

    def _train_epoch(self, step: int, last_step: int) -> tuple[int, bool]:
        """Steps from ``step`` to the end of its epoch (or ``last_step``): train, log, write the
        mid-epoch checkpoints, stop on a preemption signal. Returns (steps done, preempted)."""
        cfg = self.cfg
        epoch, start_iter = divmod(step, self.spe)
        self.data.sampler.set_epoch(epoch, start_iter)
        bar = ProgressBar(self.spe, f"epoch {epoch}", start_iter,
                          enabled=None if dist.is_main() else False)  # fmt: skip
        loads_unlabeled = getattr(self.data.sampler, "emit_unlabeled", True)
        unlabeled = cfg.batch_size_unlabeled if loads_unlabeled else 0
        images_per_step = unlabeled + cfg.batch_size_labeled  # images loaded per step and rank
        # Speed over the steps since the last log line, and how much of it the loader took.
        window_start = tic = time.perf_counter()
        window_steps, waited = 0, 0.0
        self._iterator = iter(self.data.loader)
        for batch in self._iterator:
            waited += time.perf_counter() - tic
            fault_injection_hook(step)
            ctx = StepContext(
                step, epoch, step - epoch * self.spe, self.spe, self.total_steps, self.device,
                step_generator(cfg.seed, step, dist.rank()),
            )  # fmt: skip
            self._bad_images.update(batch.pop("bad_image_indices", ()))
            log_now = (step + 1) % self.print_every == 0 or step + 1 == last_step
            self.want_grad_norm = log_now
            out = self.train_step(batch, ctx)
            self.last_loss = out.loss.detach()  # read only when a checkpoint is written
            step += 1
            window_steps += 1
            bar.update(step - epoch * self.spe, loss=out.loss)
            if log_now:
                self._flush_finite_checks()
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                rate = images_per_step * self.world * window_steps / elapsed
                self._log_step(out, ctx, rate, min(waited / elapsed, 1.0), len(self._bad_images))
                window_start, window_steps, waited = time.perf_counter(), 0, 0.0
            tic = time.perf_counter()
            every = (cfg.checkpoint_every_steps, cfg.checkpoint_every_epochs)
            boundary = log_now or self._at_epoch_end(step, last_step)
            boundary = boundary or should_save(step, last_step, self.spe, *every)
            if self._preemption_requested(step, boundary):
                self.save(step)
                if dist.is_main():
                    requeue_slurm_job()
                log.info("stopping at step %d after a preemption signal", step)
                bar.close()
                return step, True
            if self._at_epoch_end(step, last_step):
                break  # its checkpoint and validation are _end_epoch's
            if should_save(step, last_step, self.spe, cfg.checkpoint_every_steps,
                           cfg.checkpoint_every_epochs):  # fmt: skip
                self.save(step)
        bar.close()
        return step, False

    def _at_epoch_end(self, step: int, last_step: int) -> bool:
        return step % self.spe == 0 or step == last_step

    def _end_epoch(self, epoch: int, step: int, last_step: int) -> dict:
        """After epoch ``epoch`` (or the last step): its checkpoint, validation and CSV row."""
        cfg = self.cfg
        self._flush_finite_checks()  # before evaluating or saving at the epoch's end
        row = {"step": step, "epoch": epoch}
        # Save before evaluating: an error in evaluation (a corrupt val image) never loses the
        # epoch's training. The checkpoint is the same either way (eval changes nothing).
        if self._at_epoch_end(step, last_step) and should_save(
            step, last_step, self.spe, cfg.checkpoint_every_steps, cfg.checkpoint_every_epochs
        ):
            self.save(step)
        if should_evaluate(step, last_step, self.spe, cfg.eval_every_epochs):
            tic = time.perf_counter()
            result = self.evaluate(epoch, step)
            if result:
                self.val_seconds = time.perf_counter() - tic
            row.update(result)
        if dist.is_main() and len(row) > 2:
            self.epoch_csv.write(row)
            if self.wandb:
                self.wandb.log_row("val", row)
        return row
