"""Ours vs lightly (optional dependency) on identical inputs: equality and lightly/ours speed.

Rows: Sinkhorn-Knopp at three sizes, the SwAV loss with its codes, the DINO cross-view loss, on
CPU (one thread) and, when one is present, on the GPU; then multi-crop 2x224 + 8x96 on real
images (PIL, CPU). ``--clock cpu`` advised on a shared machine. lightly is not a dependency of
the package: ``pip install --no-deps lightly==1.6.0 lightning-utilities`` to compare.
"""

from __future__ import annotations

import argparse
import sys

import benchlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def tensor_rows(device: torch.device, reps: int, row) -> None:
    from lightly.loss import DINOLoss, SwaVLoss
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn

    from daino.loss import dino_cross_view_loss
    from suave.loss import swapped_prediction_loss
    from suave.sinkhorn import sinkhorn_knopp

    g = torch.Generator().manual_seed(0)

    def cosine(batch, k):
        z = F.normalize(torch.randn(batch, 128, generator=g), dim=1)
        c = F.normalize(torch.randn(k, 128, generator=g), dim=1)
        return (z @ c.t()).to(device)

    for batch, k in ((256, 100), (256, 1000), (4096, 3000)):
        s = cosine(batch, k)
        row(
            f"Sinkhorn-Knopp B={batch}, K={k}",
            lambda s=s: sinkhorn_knopp(s, 0.05, 3),
            lambda s=s: lightly_sinkhorn(s, 3, 0.05, False),
            reps * 20 if batch < 1000 else reps,
        )

    views = [cosine(64, 1000) for _ in range(10)]  # 2 global then 8 local views
    lightly_swav = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)

    def ours_swav():
        codes = {i: sinkhorn_knopp(views[i], 0.05, 3) for i in (0, 1)}
        return swapped_prediction_loss(views, codes, 0.1)

    row("SwAV loss incl. codes, B=64, K=1000, 2+8 views", ours_swav,
        lambda: lightly_swav(views[:2], views[2:]), reps * 4)  # fmt: skip

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

    row("DINO loss B=64, K=1000, 2+10 views", ours_dino, theirs_dino, reps * 4)


def multicrop_row(images: int, reps: int) -> None:
    """2x224 + 8x96 SwAV views of real CIFAR-100 images upsampled to 256 px, both on PIL."""
    from lightly.transforms import SwaVTransform

    from common.data.transforms import MultiCrop, ViewSpec

    folder = benchlib.SHARED_DATA / "cifar100-mini" / "train"
    paths = sorted(folder.glob("*/*.png"))[:: 10000 // images][:images]
    pil = [Image.open(p).convert("RGB").resize((256, 256), Image.BICUBIC) for p in paths]
    ours = MultiCrop([ViewSpec(224, (0.14, 1.0))] * 2 + [ViewSpec(96, (0.05, 0.14))] * 8)
    theirs = SwaVTransform(crop_sizes=(224, 96), crop_counts=(2, 8),
                           crop_min_scales=(0.14, 0.05), crop_max_scales=(1.0, 0.14))  # fmt: skip
    rng = np.random.default_rng(0)
    cpu = torch.device("cpu")
    variants = {"ours": lambda: [ours(im, rng) for im in pil],
                "lightly": lambda: [theirs(im) for im in pil]}  # fmt: skip
    t = benchlib.interleaved(variants, reps, cpu)
    a, b = (len(pil) / benchlib.median(t[n]) for n in ("ours", "lightly"))
    shapes = [tuple(v.shape) for v in ours(pil[0], rng)] == [tuple(v.shape) for v in theirs(pil[0])]
    print(f"| multi-crop 2x224 + 8x96, {len(pil)} real images (same view shapes: {shapes}) | - "
          f"| {a:.1f} img/s | {b:.1f} img/s | {a / b:.2f} |", flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    benchlib.add_clock_argument(parser)
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (cpu + cuda if any)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    benchlib.set_clock(args.clock)
    torch.set_num_threads(1)
    try:
        import lightly.loss  # noqa: F401
        import lightly.transforms  # noqa: F401
    except Exception as exc:  # not installed, or an incompatible install
        print(f"lightly is not available ({type(exc).__name__}: {exc}); see the docstring")
        return 0
    if args.device == "all":
        devices = [torch.device("cpu")] + (
            [torch.device("cuda")] if torch.cuda.is_available() else []
        )
    else:
        devices = [benchlib.pick_device(args.device)]
    for device in devices:
        print(f"\n{benchlib.environment(device)}")
        print("| piece | max abs diff | ours ms | lightly ms | lightly / ours |")
        print("| --- | --- | --- | --- | --- |")

        def row(name, ours, theirs, reps, device=device):
            mine, ref = ours().double(), theirs().double()
            diff = (mine - ref).abs().max().item()
            rel = diff / max(ref.abs().max().item(), 1e-30)  # losses: float32 rounding of ~10
            t = benchlib.interleaved({"ours": ours, "lightly": theirs}, reps, device)
            a, b = benchlib.median(t["ours"]) * 1e3, benchlib.median(t["lightly"]) * 1e3
            print(
                f"| {name} | {diff:.1e} ({rel:.0e} rel) | {a:.2f} | {b:.2f} | {b / a:.2f} |",
                flush=True,
            )

        tensor_rows(device, args.reps, row)
    print("\n| piece | equality | ours | lightly | ours / lightly (throughput) |")
    print("| --- | --- | --- | --- | --- |")
    multicrop_row(args.images, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
