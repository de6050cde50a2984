"""`tvt demo`: the whole method on the built-in synthetic dataset, on a CPU, with no downloads."""

from __future__ import annotations

import argparse

HELP = "run the whole method end to end on a built-in synthetic dataset (CPU, no downloads)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out",
                   help="output folder (default: demo_out); a folder made with other arguments is refused")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    p.add_argument("--classes", type=int, default=30, help="number of synthetic classes (default 30)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of the demo config, e.g. --set train.epochs=2")
    p.add_argument("--standin-steps", type=int, default=300, metavar="N",
                   help="optimizer steps of the supervised stand-in for the pretrained image ViT (default 300)")
    p.add_argument("--standin-head", choices=("classes", "random"), default="random",
                   help="random (default): a fresh DINO head; classes: the stand-in's DINO head is trained with the "
                        "labels, so the image teacher's distillation targets carry class structure (README: measured)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's choice); results are bit-identical only between runs "
                        "with the same thread count")
    p.add_argument("--ablation", action="store_true",
                   help="after the demo, train stage B again with each term switched off in turn (and CE only), "
                        "over --ablation-seeds seeds; writes ablation.json/.md/.png")
    p.add_argument("--ablation-seeds", type=int, default=2, metavar="N", help="stage-B seeds per variant (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from tvt.engine.demo import DemoOptions, run_demo

    opts = DemoOptions(seed=args.seed, classes=args.classes, standin_steps=args.standin_steps,
                       standin_head=args.standin_head, overrides=list(args.overrides))
    results = run_demo(args.out, opts, device=args.device, progress=not args.no_progress, threads=args.threads)
    if args.ablation:
        from tvt.engine.demo_ablation import run_ablation

        run_ablation(args.out, opts, seeds=args.ablation_seeds, device=args.device, progress=not args.no_progress)
    return 0 if results else 1
