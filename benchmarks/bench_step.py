"""Method overhead: a full Suave / Daino training step vs the backbone work it cannot avoid.

The step is the engine's own ``Trainer.train_step`` (schedules, autocast, method step, finite
check, backward, LARS/AdamW update, prototype normalisation or EMA teacher). The baseline is
the irreducible part on the same crops: the backbone's forward + backward over all crops and the
labeled images (same-size inputs batched together), plus for Daino the teacher backbone's
forward on the global crops without gradients. ``step / baseline`` is the method's overhead
(projector/head, Sinkhorn-Knopp, queue, losses, optimiser, EMA); the goal is <= 1.10.

CPU default: ResNet-18 at 2x64 + 4x32 px crops, batch 16 unlabeled + 8 labeled, 100 classes.
GPU (paper scale):
  python benchmarks/bench_step.py --backbone resnet50 --global_size 224 --local_size 96 \
      --num_local 6 --batch 64+32 --num_classes 1000 --precision fp16 --channels_last
  python benchmarks/bench_step.py --methods daino --backbone vit_small --global_size 224 \
      --local_size 96 --num_local 8 --batch 64+32 --num_classes 1000 --compile
The last lines printed are the ratios.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from types import SimpleNamespace

import benchlib  # noqa: F401  (sets sys.path and the torchvision shim first)
import torch
from benchlib import environment, interleaved, median, parse_batch, pick_device, spread

from common.config import from_dict
from common.engine import Trainer, step_generator
from common.method import StepContext
from common.models.multicrop import forward_multicrop
from common.optim import build_optimizer, param_groups
from common.run_config import PRECISIONS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", default="suave,daino", help="comma list: suave,daino")
    p.add_argument("--backbone", default="resnet18", help="name from common/models/factory.py")
    p.add_argument("--num_global", type=int, default=2)
    p.add_argument("--global_size", type=int, default=64)
    p.add_argument("--num_local", type=int, default=4)
    p.add_argument("--local_size", type=int, default=32)
    p.add_argument("--batch", default="16+8", help="unlabeled+labeled images per step")
    p.add_argument("--num_classes", type=int, default=100)
    p.add_argument("--queue_length", type=int, default=3840, help="Suave queue (pre-filled)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--small_conv_wgrad", choices=("native", "swapped", "auto"), default="native",
                   help="train.small_conv_wgrad (swapped: CPU bf16 only; auto: swapped with "
                   "AMX)")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    p.add_argument("--reps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--profile", type=int, default=0, help="profile N steps per method, print ops")
    benchlib.add_clock_argument(p)
    return p.parse_args(argv)


def run_config(method: str, args, device: torch.device):
    """The method's run configuration for this benchmark (paper defaults otherwise)."""
    b_u, b_l = parse_batch(args.batch)
    data = dict(
        num_global=args.num_global, global_size=args.global_size, num_local=args.num_local,
        local_size=args.local_size, labeled_size=args.global_size,
    )  # fmt: skip
    train = dict(
        epochs=1, batch_size_unlabeled=b_u, batch_size_labeled=b_l, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, device=device.type,
        sync_bn=False, small_conv_wgrad=args.small_conv_wgrad,
    )  # fmt: skip
    sections = {"data": data, "model": {"backbone": args.backbone}, "train": train}
    if method == "suave":
        sections["suave"] = {"queue_length": args.queue_length}
    from registry import METHODS

    cls = METHODS[method]
    return from_dict(cls.config_cls, sections), cls.build


def synthetic_batch(cfg, num_classes: int, device: torch.device, channels_last: bool) -> dict:
    """Loader-shaped batch already on the device (the benchmark times compute, not loading)."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    b_u, b_l = cfg.train.batch_size_unlabeled, cfg.train.batch_size_labeled
    d = cfg.data
    sizes = [d.global_size] * d.num_global + [d.local_size] * d.num_local

    def images(n, size):
        x = torch.randn(n, 3, size, size, generator=g)
        return x.to(device).contiguous(memory_format=fmt)

    batch = {"unlabeled": [images(b_u, s) for s in sizes]}
    if b_l:
        batch["labeled"] = images(b_l, d.labeled_size)
        batch["labels"] = torch.randint(0, num_classes, (b_l,), generator=g).to(device)
    return batch


class Stopwatch:
    """Wraps a callable and accumulates its wall time (device-synchronised) while enabled."""

    def __init__(self, fn, device: torch.device):
        self.fn, self.device, self.enabled, self.total = fn, device, False, 0.0

    def __call__(self, *args, **kwargs):
        if not self.enabled:
            return self.fn(*args, **kwargs)
        now = benchlib.clock(self.device)
        benchlib.synchronize(self.device)
        tic = now()
        out = self.fn(*args, **kwargs)
        benchlib.synchronize(self.device)
        self.total += now() - tic
        return out


class MethodBench:
    """One method inside a real ``Trainer``, plus its backbone-only baseline."""

    def __init__(self, name: str, args, device: torch.device, run_dir: str):
        self.name, self.device = name, device
        cfg, build = run_config(name, args, device)
        self.cfg = cfg
        self.method = build(cfg, args.num_classes, 1)
        data = SimpleNamespace(steps_per_epoch=100_000)
        cfg.log.print_every, cfg.log.plots = 10**9, False
        self.trainer = Trainer(self.method, data, None, cfg, device, f"{run_dir}/{name}")
        self.batch = synthetic_batch(cfg, args.num_classes, device, args.channels_last)
        self.step = 0
        self.amp = self.trainer.amp
        self._build_baseline(args)
        self._instrument()
        if name == "suave":
            self._fill_queue()

    def _build_baseline(self, args) -> None:
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        net = self.method.trainable
        self.backbone = copy.deepcopy(net.backbone).to(memory_format=fmt)
        self.teacher = None
        if self.name == "daino":
            self.teacher = copy.deepcopy(self.method.teacher.backbone).to(memory_format=fmt)
        # "+ optimiser" floor: the same optimiser (and fp16 loss scaler) over the backbone copy.
        groups = param_groups(self.backbone)
        self.backbone_opt = build_optimizer(self.cfg.optim, groups, self.device)
        for group in self.backbone_opt.param_groups:
            group["lr"] = 1e-6  # tiny steps: the weights barely move between timed calls
        self.backbone_scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.trainer.precision == "fp16"
        )
        if args.compile:
            self.backbone.compile()
            if self.teacher is not None:
                self.teacher.compile()

    def _instrument(self) -> None:
        """Stopwatches on the method-specific target computation (off while timing steps)."""
        if self.name == "suave":
            self.watch = Stopwatch(self.method._assignments, self.device)
            self.method._assignments = self.watch
            self.watch_label = "Sinkhorn-Knopp + queue"
        else:
            self.watch = Stopwatch(self.method.loss.forward, self.device)
            self.method.loss.forward = self.watch
            self.watch_label = "DINO loss + centering"

    def _fill_queue(self) -> None:
        queue = self.method.queue
        if queue is None:
            return
        with torch.no_grad():
            queue.embeddings.copy_(torch.nn.functional.normalize(
                torch.randn_like(queue.embeddings), dim=-1))  # fmt: skip
            queue.set_filled(queue.length)

    def train_step(self) -> None:
        t = self.trainer
        ctx = StepContext(
            self.step, 0, self.step, t.spe, t.total_steps, self.device,
            step_generator(0, self.step, 0),
        )  # fmt: skip
        t.train_step(self.batch, ctx)
        self.step += 1

    def baseline_forward(self) -> torch.Tensor:
        """Backbone forward on every crop and labeled image (+ teacher forward): a scalar to
        back-propagate."""
        batch = self.batch
        # Both methods feed labeled, globals, locals: same-size runs share one backbone call.
        inputs = ([batch["labeled"]] if "labeled" in batch else []) + list(batch["unlabeled"])
        self.backbone.zero_grad(set_to_none=True)
        with self.amp():
            feats = forward_multicrop(self.backbone, inputs)
            if self.teacher is not None:
                with torch.no_grad():
                    globals_ = batch["unlabeled"][: self.cfg.data.num_global]
                    forward_multicrop(self.teacher, globals_)
        return feats.float().mean()

    def baseline_backward(self) -> None:
        self.baseline_forward().backward()

    def baseline_with_optimizer(self) -> None:
        """The backbone work plus the optimiser (and loss scaler) step every method pays."""
        scaler = self.backbone_scaler
        scaler.scale(self.baseline_forward()).backward()
        scaler.step(self.backbone_opt)
        scaler.update()

    def peak_memory(self, fn) -> str:
        if self.device.type != "cuda":
            return "n/a (CPU)"
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        return f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB"

    def images_per_step(self) -> tuple[int, int]:
        b_u, b_l = self.cfg.train.batch_size_unlabeled, self.cfg.train.batch_size_labeled
        return b_u + b_l, b_u * len(self.batch["unlabeled"]) + b_l


def profile(benches: list[MethodBench], steps: int, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    for bench in benches:
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                bench.train_step()
            benchlib.synchronize(device)
        print(f"\n=== profile: {bench.name}, {steps} steps, top ops by {sort} ===")
        print(prof.key_averages().table(sort_by=sort, row_limit=18))
    if device.type == "cpu":
        for bench in benches:
            phase_breakdown(bench, steps)


_PHASE = "phase: "


def _label(obj, attr: str, name: str) -> None:
    """Wrap ``obj.attr`` (an instance's method) in a profiler range named ``name``."""
    from torch.profiler import record_function

    fn = getattr(obj, attr)

    def wrapped(*args, **kwargs):
        with record_function(_PHASE + name):
            return fn(*args, **kwargs)

    setattr(obj, attr, wrapped)


def phase_breakdown(bench: MethodBench, steps: int) -> dict[str, float]:
    """Self CPU time of a step by phase (CPU only): where the step spends beyond the backbone.

    Forward ops belong to the innermost labelled range they run in (a network's forward minus
    its backbone's is its head); backward ops to the forward op that recorded them (profiler
    sequence numbers), so "head (backward)" is the head's gradient work. Gradient accumulation
    and anything unlabelled is "engine and method glue".
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    m, trainer = bench.method, bench.trainer
    _label(m.trainable.backbone, "forward", "backbone")
    _label(m.trainable, "forward", "head")  # the rest of the trainable network's forward
    teacher = getattr(m, "teacher", None) or getattr(m, "ema", None)
    if teacher is not None:
        _label(teacher.backbone, "forward", "teacher backbone")
        _label(teacher, "forward", "teacher head")
    _label(m, "training_step", "losses, targets, metrics")
    _label(trainer.optimizer, "step", "optimiser")
    _label(trainer.optimizer, "zero_grad", "optimiser")
    _label(m, "after_optimizer_step", "after step (EMA / prototype norm)")
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            bench.train_step()
    events = prof.events()

    def context(ev):
        """(innermost phase label, enclosing backward function event or None)."""
        phase = backward = None
        while ev is not None:
            if phase is None and ev.name.startswith(_PHASE):
                phase = ev.name[len(_PHASE) :]
            if backward is None and ev.name.startswith("autograd::engine::evaluate_function"):
                backward = ev
            ev = ev.cpu_parent
        return phase, backward

    # An op that records no graph node (no_grad, inputs without gradients) carries the number
    # the next node will get: the last forward op seen with a number is the node's own.
    forward_phase = {}
    for ev in events:
        phase, backward = context(ev)
        if backward is None and phase is not None and ev.sequence_nr >= 0:
            forward_phase[ev.sequence_nr] = phase
    totals: dict[str, float] = {}
    for ev in events:
        if ev.name.startswith(_PHASE):
            continue
        phase, backward = context(ev)
        if backward is not None:
            source = forward_phase.get(backward.sequence_nr)
            phase = f"{source} (backward)" if source else None
        name = phase or "engine and method glue"
        totals[name] = totals.get(name, 0.0) + ev.self_cpu_time_total / 1e3 / steps
    step = sum(totals.values())
    backbone = sum(v for k, v in totals.items() if "backbone" in k)
    print(f"\n=== {bench.name}: self CPU time by phase, {steps} steps (ms per step) ===")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{name:40s} {ms:9.2f} ms {100 * ms / step:6.2f}% of the step "
              f"{100 * ms / backbone:6.2f}% of the backbones")  # fmt: skip
    print(f"{'step':40s} {step:9.2f} ms (backbones, student and teacher: {backbone:.2f} ms)")
    return totals


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    benchlib.set_clock(args.clock)
    torch.manual_seed(0)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as run_dir:
        benches = [MethodBench(name, args, device, run_dir) for name in names]
        variants = {}
        for b in benches:
            variants[f"{b.name}_step"] = b.train_step
            variants[f"{b.name}_backbone"] = b.baseline_backward
            variants[f"{b.name}_backbone_opt"] = b.baseline_with_optimizer
        times = interleaved(variants, args.reps, device, warmup=args.warmup)
        # Instrumented steps (extra synchronisations) only for the target-computation share.
        shares = {}
        for b in benches:
            b.watch.enabled, b.watch.total = True, 0.0
            reps = max(3, args.reps // 2)
            step_times = [benchlib.timed(b.train_step, device) for _ in range(reps)]
            b.watch.enabled = False
            shares[b.name] = (b.watch.total / len(step_times), median(step_times))
        memory = {}
        for b in benches:
            memory[b.name] = (b.peak_memory(b.train_step), b.peak_memory(b.baseline_backward))
        if args.profile:
            profile(benches, args.profile, device)

    print(f"\nenvironment: {environment(device)}")
    print(
        f"setup: backbone {args.backbone}, crops {args.num_global}x{args.global_size} + "
        f"{args.num_local}x{args.local_size} px, batch {args.batch} (unlabeled+labeled), "
        f"K={args.num_classes}, precision {args.precision}, channels_last {args.channels_last}, "
        f"compile {args.compile}, small_conv_wgrad {args.small_conv_wgrad}, {args.reps} "
        f"interleaved reps (median [IQR] {args.clock} seconds)"
    )
    results = {}
    for b in benches:
        step, base = median(times[f"{b.name}_step"]), median(times[f"{b.name}_backbone"])
        images, crops = b.images_per_step()
        watch, watched_step = shares[b.name]
        mem_step, mem_base = memory[b.name]
        print(
            f"{b.name}: train step  {spread(times[f'{b.name}_step'])} s, "
            f"{images / step:.1f} images/s ({crops / step:.1f} crops/s), peak mem {mem_step}"
        )
        print(
            f"{b.name}: backbone    {spread(times[f'{b.name}_backbone'])} s, "
            f"{images / base:.1f} images/s, peak mem {mem_base}"
        )
        print(f"{b.name}: backbone + optimiser {spread(times[f'{b.name}_backbone_opt'])} s "
              f"(step / this = {step / median(times[f'{b.name}_backbone_opt']):.3f}: the "
              f"method's own work beyond what any trainer of this backbone pays)")  # fmt: skip
        print(f"{b.name}: {b.watch_label}: {watch * 1e3:.2f} ms per step = "
              f"{100 * watch / watched_step:.2f}% of the step")  # fmt: skip
        results[b.name] = {"step_s": step, "backbone_s": base, "ratio": step / base,
                           "target_share": watch / watched_step}  # fmt: skip
    for name, r in results.items():
        verdict = "ok" if r["ratio"] <= 1.10 else "ABOVE GOAL"
        print(f"RATIO {name} step/backbone = {r['ratio']:.3f} (goal <= 1.10: {verdict})")
    return results


if __name__ == "__main__":
    main()
