"""Ours vs lightly (optional dependency) on identical inputs: equality and lightly/ours speed.

Rows: Sinkhorn-Knopp at three sizes, DINO cross-view loss. One thread; ``--clock cpu`` advised.
Not yet covered: SwAV loss incl. codes, multi-crop transforms (issue 20).
"""

from __future__ import annotations

import argparse
import sys

import benchlib
import torch
import torch.nn.functional as F


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    benchlib.add_clock_argument(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    benchlib.set_clock(args.clock)
    torch.set_num_threads(1)
    try:
        from lightly.loss import DINOLoss
        from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn
    except Exception as exc:  # not installed, or an incompatible install
        print(f"lightly is not available ({type(exc).__name__}); pip install lightly to compare")
        return 0
    from daino.loss import dino_cross_view_loss
    from suave.sinkhorn import sinkhorn_knopp

    device = benchlib.pick_device(args.device)
    print(benchlib.environment(device))
    print("| piece | max abs diff | ours ms | lightly ms | lightly / ours |")
    print("| --- | --- | --- | --- | --- |")
    g = torch.Generator().manual_seed(0)

    def row(name, ours, theirs, reps):
        diff = (ours().double() - theirs().double()).abs().max().item()
        t = benchlib.interleaved({"ours": ours, "lightly": theirs}, reps, device)
        a, b = benchlib.median(t["ours"]) * 1e3, benchlib.median(t["lightly"]) * 1e3
        print(f"| {name} | {diff:.1e} | {a:.2f} | {b:.2f} | {b / a:.2f} |", flush=True)

    for batch, k in ((256, 100), (256, 1000), (4096, 3000)):
        z = F.normalize(torch.randn(batch, 128, generator=g), dim=1).to(device)
        c = F.normalize(torch.randn(k, 128, generator=g), dim=1).to(device)
        s = z @ c.t()
        reps = args.reps if batch < 1000 else 3
        row(
            f"Sinkhorn-Knopp B={batch}, K={k}",
            lambda s=s: sinkhorn_knopp(s, 0.05, 3),
            lambda s=s: lightly_sinkhorn(s, 3, 0.05, False),
            reps,
        )

    student = [torch.randn(64, 1000, generator=g).to(device) for _ in range(10)]
    teacher = [torch.randn(64, 1000, generator=g).to(device) for _ in range(2)]
    lightly_dino = DINOLoss(1000, warmup_teacher_temp=0.04, teacher_temp=0.04,
                            warmup_teacher_temp_epochs=0, student_temp=0.1).to(device)  # fmt: skip
    lightly_dino.center.zero_()

    def ours_dino():
        probs = [F.softmax(t / 0.04, dim=-1) for t in teacher]
        return dino_cross_view_loss(student, probs, 0.1)

    def theirs_dino():
        out = lightly_dino(teacher, student, epoch=0)
        lightly_dino.center.zero_()  # same targets every call
        return out

    row("DINO loss B=64, K=1000, 2+10 views", ours_dino, theirs_dino, args.reps * 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
