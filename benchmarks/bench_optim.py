"""Optimiser step time per implementation (``optim.implementation``: loop / foreach / fused).

Times one ``step()`` on the parameters of a real backbone with random gradients, variants
interleaved. It justifies what ``implementation: auto`` picks on each device. ``--tiny`` keeps
the parameter count but shrinks every tensor to 8 values: what is left is the per-step dispatch
cost (kernel launches), which is what a GPU pays on the CPU side; LARS is compared there with
its former per-parameter trust-ratio code (~10 small ops per tensor).
  python benchmarks/bench_optim.py [--backbone resnet50] [--device cuda] [--tiny]
"""

from __future__ import annotations

import argparse

import benchlib  # sets sys.path and the torchvision shim first
import torch
from benchlib import environment, interleaved, median, pick_device, spread

from common.models.factory import build_backbone
from common.optim import OptimConfig, build_optimizer, param_groups


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--device", default="auto")
    p.add_argument("--reps", type=int, default=15)
    benchlib.add_clock_argument(p)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--tiny", action="store_true", help="8 values per tensor: dispatch cost only")
    return p.parse_args(argv)


def lars_per_parameter_ratios(opt: torch.optim.Optimizer):
    """The former LARS trust ratios, one small kernel chain per parameter (for comparison)."""

    @torch.no_grad()
    def step():
        for group in opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            wd, trust, eps = group["weight_decay"], group["trust_coefficient"], group["eps"]
            grads = torch._foreach_add([p.grad for p in params], params, alpha=wd)
            w_norms = torch._foreach_norm(params)
            g_norms = torch._foreach_norm([p.grad for p in params])
            if not group["lars"]:
                w_norms = g_norms = [None] * len(params)
            grads = [
                (
                    g
                    if w is None
                    else g * torch.where((w > 0) & (gn > 0), trust * w / (gn + wd * w + eps), 1.0)
                )
                for g, w, gn in zip(grads, w_norms, g_norms)
            ]
            bufs = [opt.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])

    return step


def variants(model: torch.nn.Module, device: torch.device) -> dict:
    out = {}
    for name in ("sgd", "adamw"):
        for impl in ("loop", "foreach", "fused", "auto"):
            if name == "sgd" and impl == "fused":
                continue  # refused (common/optim.py): torch's fused SGD is unsafe
            opt = build_optimizer(OptimConfig(name=name, implementation=impl),
                                  param_groups(model), device)  # fmt: skip
            out[f"{name}/{impl}"] = opt.step
    out["lars"] = build_optimizer(OptimConfig(name="lars"), param_groups(model), device).step
    former = build_optimizer(OptimConfig(name="lars"), param_groups(model), device)
    out["lars/per-param"] = lars_per_parameter_ratios(former)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    benchlib.set_clock(args.clock)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = build_backbone(args.backbone)
    model.to(device)
    if args.tiny:
        with torch.no_grad():
            for p in model.parameters():
                p.data = torch.randn(8, device=device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    times = interleaved(variants(model, device), args.reps, device, warmup=2)
    n = sum(p.numel() for p in model.parameters())
    print(f"\nenvironment: {environment(device)}")
    print(
        f"{args.backbone}: {n / 1e6:.1f} M parameters, {args.reps} interleaved reps, "
        f"median [IQR] {args.clock} ms"
    )
    for name, t in times.items():
        print(f"  {name:14s} {spread([1e3 * x for x in t])} ms")
    for opt in ("sgd", "adamw"):
        loop = median(times[f"{opt}/loop"])
        ratios = ", ".join(
            f"loop/{impl} = {loop / median(times[f'{opt}/{impl}']):.2f}"
            for impl in ("foreach", "fused", "auto")
            if f"{opt}/{impl}" in times
        )
        print(f"RATIO {opt} {ratios}")
    lars = median(times["lars/per-param"]) / median(times["lars"])
    print(f"RATIO lars per-parameter ratios / vectorised ratios = {lars:.2f}")
    return times


if __name__ == "__main__":
    main()
