"""Images/s of feature extraction (the fusion feature, return_idx 0): reference vs tvt's path.

Reference: fp32, explicit softmax(QK^T)V attention, torch.no_grad (as the authors' eval code).
tvt: fused attention (SDPA), torch.inference_mode, bf16 autocast on GPU. Features of both paths
are compared (max abs difference of the L2-normalised features).

    python benchmarks/extract.py                  # tiny model on CPU
    python benchmarks/extract.py --size vit_s8    # ViT-S/8 at 224 (use a GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from _models import add_common_args, build, fast_dtype, pick_device, set_reference_attention


def extract(student, x: torch.Tensor, batch: int, fast: bool, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    ctx = torch.inference_mode() if fast else torch.no_grad()
    ac = torch.autocast(device.type, dtype=dtype) if (fast and dtype is not None) else contextlib.nullcontext()
    outs = []
    with ctx, ac:
        for i in range(0, len(x), batch):
            outs.append(student.features(x[i:i + batch], "skt", 0).float())
    return F.normalize(torch.cat(outs), dim=1)


def measure(args, device: torch.device) -> dict:
    """{"reference": img/s, "fast": img/s, "diff": max |feature difference|} for ``args.size``."""

    torch.manual_seed(0)
    _, _, student, img, _ = build(args.size, device)
    student.eval()
    x = torch.randn(args.images, 3, img, img).to(device)
    dtype = fast_dtype(getattr(args, "precision", "auto"), device)
    results = {}
    for mode in ("reference", "fast"):
        set_reference_attention(student, reference=(mode == "reference"))
        feats = extract(student, x[: args.batch], args.batch, mode == "fast", device, dtype)  # warm-up
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            feats = extract(student, x, args.batch, mode == "fast", device, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[mode] = (args.images / statistics.median(times), feats)
    diff = (results["fast"][1] - results["reference"][1]).abs().max().item()
    return {"reference": results["reference"][0], "fast": results["fast"][0], "diff": diff, "bf16": dtype is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    device, name = pick_device(args)
    r = measure(args, device)
    print(f"feature extraction, model {args.size}, {args.images} images, batch {args.batch}, device: {name}, "
          f"torch {torch.__version__}")
    print(f"| path | images/s (median of {args.repeats}) |")
    print("|---|---|")
    print(f"| reference (fp32, explicit attention, no_grad) | {r['reference']:.1f} |")
    print(f"| tvt (SDPA, inference_mode{', bf16' if r['bf16'] else ''}) | {r['fast']:.1f} |")
    print(f"speed-up {r['fast'] / r['reference']:.2f}x; max |feature difference| {r['diff']:.2e}")


if __name__ == "__main__":
    main()
