"""Encoding speed of the named backbones on this machine (random weights: speed does not depend on them).

    python benchmarks/backbones.py [--batch 8] [--threads 2] [--names dinov2_vits14 clip_vitb16 ...]

Prints one row per backbone: parameters, feature size, input side and images per second for a
forward pass of the plain encoder (what `tvt index --backbone` runs per photo). Not a test.
"""

from __future__ import annotations

import argparse
import time

import torch

from tvt.models.backbones import BACKBONES, build_named_vit


def measure(name: str, batch: int, reps: int) -> tuple[int, int, int, float]:
    vit = build_named_vit(name).eval()
    x = torch.randn(batch, 3, vit.arch.img_size, vit.arch.img_size)
    with torch.inference_mode():
        vit(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            vit(x)
        dt = time.perf_counter() - t0
    params = sum(p.numel() for p in vit.parameters())
    return params, vit.embed_dim, vit.arch.img_size, batch * reps / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--names", nargs="+", default=list(BACKBONES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| backbone | timm model | params | dim | input | images/s |")
    print("|---|---|---|---|---|---|")
    for name in args.names:
        params, dim, size, rate = measure(name, args.batch, args.reps)
        print(f"| {name} | {BACKBONES[name].timm_name} | {params / 1e6:.1f}M | {dim} | {size} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
