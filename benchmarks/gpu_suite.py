"""Every GPU figure the README still lacks, in one go, as one table (not a test).

1. one TVT optimizer step (benchmarks/train_step.py): faithful eager reference (fp32, explicit
   attention) against tvt's path in bf16 and in fp32;
2. feature extraction (benchmarks/extract.py), same comparison;
3. `tvt index` throughput (benchmarks/index.py): one process, bf16 against fp32, with DataLoader
   decoding workers.

    python benchmarks/gpu_suite.py --out gpu_table.md                 # ViT-S/8 at 224 on the GPU
    python benchmarks/gpu_suite.py --size tiny --quick                # check it runs (CPU is fine)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import types
from pathlib import Path

import torch

import extract as extract_bench
import index as index_bench
import train_step as step_bench


def step_rows(args: argparse.Namespace, device: torch.device) -> list[list[str]]:
    ns = types.SimpleNamespace(size=args.size, batch=args.step_batch, accum=args.accum, skt_factor=2,
                               repeats=args.repeats, compile=False, precision="fp32")
    ref, loss_ref = step_bench.run("reference", ns, device)
    rows = []
    for precision in ("bf16", "fp32"):
        ns.precision = precision
        fast, loss_fast = step_bench.run("fast", ns, device)
        rows.append([f"TVT optimizer step ({args.step_batch} photos + {args.step_batch // 2} sketches)", precision,
                     f"{ref:.1f}", f"{fast:.1f}", f"{fast / ref:.2f}×",
                     f"first-step loss difference {abs(loss_fast - loss_ref):.1e}"])
    return rows


def extract_rows(args: argparse.Namespace, device: torch.device) -> list[list[str]]:
    rows = []
    for precision in ("bf16", "fp32"):
        ns = types.SimpleNamespace(size=args.size, images=args.images, batch=args.extract_batch,
                                   repeats=args.repeats, precision=precision)
        r = extract_bench.measure(ns, device)
        rows.append([f"feature extraction ({args.images} images)", precision, f"{r['reference']:.1f}",
                     f"{r['fast']:.1f}", f"{r['fast'] / r['reference']:.2f}×",
                     f"max feature difference {r['diff']:.1e}"])
    return rows


def index_rows(args: argparse.Namespace) -> list[list[str]]:
    ns = types.SimpleNamespace(batch=args.index_batch, workers=args.workers, device="auto", threads=0,
                               repeats=args.repeats, photos=args.photos)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        index_bench.write_photos(tmp / "photos", args.photos, args.photo_size)
        ckpt = index_bench.write_checkpoint(tmp / "model.pth", args.size)
        for precision in ("bf16", "fp32"):
            r = index_bench.measure(1, precision, tmp / "photos", ckpt, tmp, ns)
            rows.append([f"`tvt index` ({args.photos} JPEGs of {args.photo_size} px, {args.workers} workers)",
                         precision, "–", f"{r['img_s']:.1f}", "–", "1 process; rate printed by tvt index (start-up excluded)"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "vit_s8"], default="vit_s8")
    p.add_argument("--quick", action="store_true", help="small counts, to check that everything runs")
    p.add_argument("--out", help="also write the table (markdown) here")
    args = p.parse_args()
    quick = args.quick
    args.repeats = 2 if quick else 5
    args.step_batch, args.accum = (8, 2) if quick else (64, 4)
    args.images, args.extract_batch = (32, 16) if quick else (1024, 128)
    args.photos, args.photo_size, args.index_batch = (32, 64, 16) if quick else (2048, 256, 128)
    args.workers = 0 if quick else min(8, os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    rows = step_rows(args, device) + extract_rows(args, device) + index_rows(args)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [f"Model {args.size}, device: {name}, torch {torch.__version__}, median of {args.repeats}; "
             f"reference = fp32 eager with explicit attention; suite took {time.time() - t0:.0f} s",
             "", "| benchmark | tvt precision | reference images/s | tvt images/s | speed-up | check |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
