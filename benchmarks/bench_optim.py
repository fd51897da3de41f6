"""Optimiser step time per implementation (``optim.implementation``: loop / foreach / fused).

Times one ``step()`` on the parameters of a real backbone with random gradients, variants
interleaved. It justifies what ``implementation: auto`` picks on each device.
  python benchmarks/bench_optim.py [--backbone resnet50] [--device cuda]
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
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    return p.parse_args(argv)


def variants(model: torch.nn.Module, device: torch.device) -> dict:
    out = {}
    for name in ("sgd", "adamw"):
        for impl in ("loop", "foreach", "fused", "auto"):
            opt = build_optimizer(OptimConfig(name=name, implementation=impl),
                                  param_groups(model), device)  # fmt: skip
            out[f"{name}/{impl}"] = opt.step
    out["lars"] = build_optimizer(OptimConfig(name="lars"), param_groups(model), device).step
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    benchlib.set_clock(args.clock)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = build_backbone(args.backbone)
    model.to(device)
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
        best = min(("foreach", "fused"), key=lambda k: median(times[f"{opt}/{k}"]))
        print(
            f"RATIO {opt} loop/foreach = {loop / median(times[f'{opt}/foreach']):.2f}, "
            f"loop/fused = {loop / median(times[f'{opt}/fused']):.2f}, "
            f"loop/auto = {loop / median(times[f'{opt}/auto']):.2f} (fastest: {best})"
        )
    return times


if __name__ == "__main__":
    main()
