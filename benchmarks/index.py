"""Images/s of `tvt index` on 1 and more processes (torchrun), fp32 and bf16 (not a test).

Writes ``--photos`` random JPEGs and a randomly initialised TVT student of ``--size``
(benchmarks/_models.py) to a temporary folder, then runs the real command line:
``python -m tvt.cli index`` for one process and ``torchrun --nproc_per_node N -m tvt.cli index``
for N, and reads the rate the command prints: photos embedded / wall time from the start of the
embedding to the moment every rank has written its shards (decoding included; process start-up,
model load and the final merge excluded). Median of ``--repeats``.

    python benchmarks/index.py --size tiny --photos 512 --procs 1 2            # CPU
    python benchmarks/index.py --size vit_s8 --photos 4096 --precision fp32 bf16 --workers 8   # GPU
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _models import build


def write_photos(root: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = np.kron(blocks, np.ones((size // 8, size // 8, 1), np.uint8))
        Image.fromarray(img).save(root / f"{i:06d}.jpg", quality=90)


def write_checkpoint(path: Path, size: str) -> Path:
    from tvt.models.weights import arch_hints

    torch.manual_seed(0)
    _, _, student, _, _ = build(size, torch.device("cpu"))
    torch.save({"format": "tvt", "version": 1, "stage": "tvt", "student": student.state_dict(),
                "arch": arch_hints(student)}, path)
    return path


def command(procs: int, photos: Path, out: Path, ckpt: Path, args: argparse.Namespace, precision: str) -> list[str]:
    launcher = [sys.executable, "-m", "tvt.cli"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m", "tvt.cli"]
    return [*launcher, "index", str(photos), "--out", str(out), "--checkpoint", str(ckpt), "--batch-size",
            str(args.batch), "--workers", str(args.workers), "--device", args.device, "--precision", precision,
            "--no-progress"]


def embed_rate(cmd: list[str], env: dict[str, str]) -> float:
    """Photos/s of the embedding as the command reports it (wall time of all ranks, start-up excluded)."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    match = re.search(r"\(([0-9.]+) photos/s\)", proc.stdout)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return float(match.group(1))


def measure(procs: int, precision: str, photos: Path, ckpt: Path, tmp: Path, args: argparse.Namespace) -> dict:
    # threads per process: by default the visible cores are divided between the processes
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads or max(1, (os.cpu_count() or 1) // procs)))
    rates = []
    for _ in range(args.repeats):
        out = tmp / "index"
        shutil.rmtree(out, ignore_errors=True)
        rates.append(embed_rate(command(procs, photos, out, ckpt, args, precision), env))
    return {"procs": procs, "precision": precision, "img_s": statistics.median(rates), "all": rates}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "vit_s8"], default="tiny")
    p.add_argument("--photos", type=int, default=512)
    p.add_argument("--photo-size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader decoding workers per process")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per process (0: cores / processes)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        write_photos(tmp / "photos", args.photos, args.photo_size)
        ckpt = write_checkpoint(tmp / "model.pth", args.size)
        rows = [measure(n, prec, tmp / "photos", ckpt, tmp, args) for prec in args.precision for n in args.procs]
    gpu = torch.cuda.is_available() and args.device != "cpu"
    device = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores visible)"
    print(f"tvt index, model {args.size} (random weights), {args.photos} JPEGs of {args.photo_size} px, batch "
          f"{args.batch}, {args.workers} decoding workers per process, device: {device}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"| processes | precision | images/s (median of {args.repeats}) | runs |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['procs']} | {r['precision']} | {r['img_s']:.1f} | {', '.join(f'{x:.1f}' for x in r['all'])} |")


if __name__ == "__main__":
    main()
