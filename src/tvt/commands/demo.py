"""`tvt demo`: the whole method on the built-in synthetic dataset, on a CPU, with no downloads."""

from __future__ import annotations

import argparse

HELP = "run the whole method end to end on a built-in synthetic dataset (CPU, no downloads)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    p.add_argument("--classes", type=int, default=30, help="number of synthetic classes (default 30)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of the demo config, e.g. --set train.epochs=2")
    p.add_argument("--standin-steps", type=int, default=300, metavar="N",
                   help="optimizer steps of the supervised stand-in for the pretrained image ViT (default 300)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from tvt.engine.demo import run_demo

    results = run_demo(args.out, seed=args.seed, classes=args.classes, device=args.device,
                       progress=not args.no_progress, overrides=args.overrides,
                       standin_steps=args.standin_steps)
    return 0 if results else 1
