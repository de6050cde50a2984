"""``tvt data synth``: write the built-in synthetic sketch/photo dataset."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HELP = "generate the built-in synthetic sketch/photo dataset (shape classes, zero-shot split)"

# What `generate` and `contact_sheet` write inside <OUT>/<dataset>; --force replaces only these.
_OWNED = ("photo", "sketch", "split", "README.txt", "preview.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="data root; the dataset goes to OUT/<dataset>")
    parser.add_argument("--classes", type=int, default=30, help="number of classes (2..max designs, default 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed: identical files)")
    parser.add_argument("--photos-per-class", type=int, default=40, metavar="N", help="photos per class (default 40)")
    parser.add_argument("--sketches-per-class", type=int, default=40, metavar="N",
                        help="sketches per class (default 40)")
    parser.add_argument("--size", type=int, default=64, metavar="PX", help="image side in pixels (default 64)")
    parser.add_argument("--unseen", type=int, default=None, metavar="N",
                        help="number of unseen (zero-shot) classes (default max(2, classes // 4))")
    parser.add_argument("--dataset", default="synth", metavar="NAME", help="dataset folder name (default synth)")
    parser.add_argument("--force", action="store_true",
                        help="replace the photo/, sketch/, split/ folders of an existing OUT/<dataset>")
    parser.add_argument("--sheet", action=argparse.BooleanOptionalAction, default=True,
                        help="write a preview contact sheet OUT/<dataset>/preview.png (default on)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tvt.data.synth import contact_sheet, generate
    from tvt.errors import ConfigError, DataError

    if not args.dataset or any(c in args.dataset for c in "/\\") or args.dataset in (".", ".."):
        raise ConfigError(f"--dataset {args.dataset!r} must be a plain folder name")
    target = Path(args.out) / args.dataset
    if target.exists() and not target.is_dir():
        raise DataError(f"{target} exists and is not a folder; choose another OUT or --dataset")
    if target.is_dir() and any(target.iterdir()):
        if not args.force:
            raise DataError(f"{target} already exists and is not empty; choose another OUT or --dataset, "
                            "or pass --force to replace it")
        for name in _OWNED:
            p = target / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    root = generate(args.out, num_classes=args.classes, seed=args.seed, photos_per_class=args.photos_per_class,
                    sketches_per_class=args.sketches_per_class, size=args.size, num_unseen=args.unseen,
                    dataset=args.dataset, progress=not args.quiet)
    unseen = (root / "split" / "zeroshot_classes.txt").read_text().split()
    n_train = args.classes - len(unseen)
    print(f"wrote {root}")
    print(f"  classes: {args.classes} ({n_train} training, {len(unseen)} unseen: {', '.join(unseen)})")
    print(f"  photos: {args.classes * args.photos_per_class} ({args.photos_per_class} per class), "
          f"sketches: {args.classes * args.sketches_per_class} ({args.sketches_per_class} per class), "
          f"{args.size} px")
    print(f"  split files: {root / 'split' / 'all_classes.txt'}, {root / 'split' / 'zeroshot_classes.txt'}")
    if args.sheet:
        print(f"  preview: {contact_sheet(root, root / 'preview.png')}")
    return 0
