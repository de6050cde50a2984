"""Images/s of one TVT optimizer step: faithful eager reference vs tvt's fast path, same device.

Reference: fp32, hand-written attention (softmax(QK^T)V, as the authors' code), teachers under
no_grad. Fast path: fused attention (scaled_dot_product_attention), bf16 autocast on GPU, teachers
under inference_mode, optional torch.compile. Both run the same sub-step loop of spec Appendix A on
random data, and the loss of the first step is compared (tolerance: bf16 on GPU, exact-ish on CPU).

    python benchmarks/train_step.py                 # tiny model on CPU (default here)
    python benchmarks/train_step.py --size vit_s8   # ViT-S/8 at 224 (use a GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import types

import torch

from _models import add_common_args, build, fast_dtype, pick_device, set_reference_attention
from tvt.losses.dino import DINOCenter
from tvt.losses.hypersphere import CenterAlignment
from tvt.losses.objective import tvt_loss


def step(teachers, student, opt, x_img, x_skt, y, accum: int, skt_factor: int, fast: bool, device) -> float:
    dtype = step.dtype if fast else None  # the reference is always fp32
    ac = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    no_grad = torch.inference_mode if fast else torch.no_grad
    centres, ca = step.centres, step.ca
    b = x_img.shape[0] // accum
    n_sub = accum + accum // skt_factor
    total = 0.0
    for i in range(accum):
        parts = [("img", x_img[i * b:(i + 1) * b], y[i * b:(i + 1) * b], teachers[0])]
        if (i + 1) % skt_factor == 0:
            k = (i + 1) // skt_factor
            parts.append(("skt", x_skt[(k - 1) * b:k * b], y[(k - 1) * b:k * b], teachers[1]))
        for m, x, yy, teacher in parts:
            with no_grad(), ac:
                t = teacher(x).float()
            with ac:
                out = student(x, m)
            out = types.SimpleNamespace(dino_logits=out.dino_logits.float(), cls_logits=out.cls_logits.float(), f=out.f.float())
            terms = tvt_loss(out, t.clone(), yy, m, dino_center=centres, ca=ca, teacher_temp=0.07, w_t=2.0)
            (terms["objective"] / n_sub).backward()
            total += float(terms["loss"]) / n_sub
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


def run(mode: str, args, device) -> tuple[float, float]:
    torch.manual_seed(0)
    t_img, t_skt, student, img, classes = build(args.size, device)
    set_reference_attention(t_img, t_skt, student, reference=(mode == "reference"))
    student.eval()  # [Q19]
    if mode == "fast" and args.compile:
        student = torch.compile(student)
    step.dtype = fast_dtype(getattr(args, "precision", "auto"), device)
    step.centres = DINOCenter(t_img.head.last_layer.weight_v.shape[0]).to(device)
    step.ca = CenterAlignment(classes, dim=student.head_fusion.fc.weight.shape[1]).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(1)
    x_img = torch.randn(args.batch, 3, img, img, generator=g).to(device)
    x_skt = torch.randn(args.batch // args.skt_factor, 3, img, img, generator=g).to(device)
    y = torch.randint(0, classes, (args.batch,), generator=g).to(device)
    first = step((t_img, t_skt), student, opt, x_img, x_skt, y, args.accum, args.skt_factor, mode == "fast", device)
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step((t_img, t_skt), student, opt, x_img, x_skt, y, args.accum, args.skt_factor, mode == "fast", device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    n = args.batch + args.batch // args.skt_factor
    return n / statistics.median(times), first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=64, help="photos per step")
    p.add_argument("--accum", type=int, default=4)
    p.add_argument("--skt-factor", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    device, name = pick_device(args)
    ref, loss_ref = run("reference", args, device)
    fast, loss_fast = run("fast", args, device)
    tol = 5e-2 if device.type == "cuda" else 1e-4
    print(f"TVT optimizer step, model {args.size}, batch {args.batch} photos + {args.batch // args.skt_factor} sketches, "
          f"G={args.accum}, s={args.skt_factor}, device: {name}, torch {torch.__version__}")
    print("| path | images/s (median of %d) | first-step loss |" % args.repeats)
    print("|---|---|---|")
    print(f"| reference (fp32, explicit attention) | {ref:.1f} | {loss_ref:.5f} |")
    print(f"| tvt (SDPA{', bf16' if fast_dtype(args.precision, device) else ''}{', compile' if args.compile else ''}) | {fast:.1f} | {loss_fast:.5f} |")
    print(f"speed-up {fast / ref:.2f}x; loss difference {abs(loss_fast - loss_ref):.2e} (tolerance {tol:g}): "
          f"{'ok' if abs(loss_fast - loss_ref) <= tol * max(1.0, abs(loss_ref)) else 'MISMATCH'}")


if __name__ == "__main__":
    main()
