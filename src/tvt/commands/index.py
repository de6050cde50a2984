"""`tvt index`: embed a folder of photos into a search index (incremental, resumable).

``torchrun --nproc_per_node N -m tvt.cli index ...`` splits the embedding over N processes
(:mod:`tvt.search.sharded`); rank 0 writes the index.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tvt.search.update import IndexReport

HELP = "index a folder of photos for sketch search (re-run to add new or changed photos)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photo_dir", metavar="PHOTO_DIR", help="folder of photos, searched recursively")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="index directory (created or updated)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="TVT (or ViT) checkpoint or model folder (`tvt export`); default when updating: the one "
                        "recorded in the index")
    p.add_argument("--backbone", metavar="NAME",
                   help="use a pretrained backbone directly, no training (e.g. dinov2_vits14, clip_vitb16; any timm "
                        "ViT name); with --weights")
    p.add_argument("--weights", metavar="FILE_OR_DIR",
                   help="the backbone's weights: timm state dict, .safetensors, timm/Hugging Face model folder, or an "
                        "official DINO/DINOv2 file")
    p.add_argument("--download", action="store_true",
                   help="on an online machine: fetch --backbone's weights through timm into --weights first")
    p.add_argument("--img-size", type=int, help="input side for --backbone (default: the backbone's, e.g. 224)")
    p.add_argument("--return-idx", type=int, choices=[0, 1, 2, 3], default=None,
                   help="feature choice of a TVT model (spec §2.4); default 0, or the index's when updating")
    p.add_argument("--batch-size", type=int, default=32, help="photos per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default 0)")
    p.add_argument("--rebuild", action="store_true",
                   help="discard the existing index (needed when the checkpoint or folder changed)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="encoder arithmetic: bf16 autocast or fp32 (default: bf16 on a GPU, fp32 on a CPU)")


def resolve_device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _previous_model(out: str) -> dict | None:
    import json
    from pathlib import Path

    try:
        return json.loads((Path(out) / "index.json").read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _encoder(args: argparse.Namespace, prev: dict | None):
    """(encoder, source path) from --checkpoint, --backbone/--weights, or the index being updated."""
    from pathlib import Path

    from tvt.errors import CheckpointError, InputError
    from tvt.models.resolve import open_encoder

    device = resolve_device(args.device)
    if args.backbone or args.weights:
        if args.checkpoint:
            raise InputError("pass either --checkpoint or --backbone/--weights, not both")
        enc = open_encoder(backbone=args.backbone, weights=args.weights, img_size=args.img_size, device=device,
                           download=args.download)
        return enc, Path(args.weights).expanduser().absolute()
    prev = prev or {}
    ckpt = args.checkpoint or prev.get("checkpoint")
    if not ckpt:
        raise InputError("no checkpoint: pass --checkpoint CKPT_OR_FOLDER, or --backbone NAME --weights FILE "
                         "(a pretrained backbone, no training)")
    path = Path(ckpt).expanduser().absolute()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    backbone = None if args.checkpoint else (prev.get("extra") or {}).get("pretrained_backbone")
    if backbone:  # updating an index built with a pretrained backbone
        return open_encoder(backbone=backbone, weights=path, img_size=prev.get("img_size"), device=device), path
    return_idx = args.return_idx if args.return_idx is not None else prev.get("return_idx")
    return open_encoder(path, return_idx=return_idx, device=device), path


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tvt.errors import InputError
    from tvt.models.resolve import weak_model_warning
    from tvt.distributed import setup
    from tvt.search.identity import model_identity

    if args.batch_size < 1 or args.workers < 0:
        raise InputError("--batch-size must be >= 1 and --workers >= 0")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a file, not a folder; give the index a folder of its own")
    prev = None if args.rebuild else _previous_model(args.out)
    args.device = str(setup(args.device).device)  # joins the process group under torchrun
    encoder, source = _encoder(args, prev)
    if (warning := weak_model_warning(encoder.info)) is not None:
        print(warning, file=sys.stderr)
    model = model_identity(encoder, source)
    with disk_errors_said(args.out):
        report = _index(args, encoder, model)
    if report is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    print(report.summary())
    say_skipped(report, args.out)
    return 0


def say_skipped(report: IndexReport, out: str) -> None:
    """The skipped files (first 20) and, for an index of no photos, why it is empty."""
    from pathlib import Path

    from tvt.search.index import display_name

    for rel, reason in report.skipped[:20]:
        print(f"  skipped {display_name(rel)}: {reason}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more (listed in {Path(out) / 'index.json'})", file=sys.stderr)
    if report.total == 0:
        why = f"all {len(report.skipped)} image files were skipped" if report.skipped else \
            "the folder holds no image files (.jpg, .jpeg, .png, ... searched recursively)"
        print(f"tvt index: warning: the index holds no photos: {why}; `tvt search` and `tvt serve` refuse it",
              file=sys.stderr)


@contextmanager
def disk_errors_said(out: str) -> Iterator[None]:
    """A full, read-only or vanished output disk as a user error (the last complete index is kept)."""
    import errno

    from tvt.errors import DataError

    try:
        yield
    except OSError as exc:
        hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (disk quota)",
                errno.EROFS: "choose a writable --out", errno.EACCES: "choose a writable --out",
                errno.EPERM: "choose a writable --out"}.get(exc.errno, "check the disk")
        where = f" ({exc.filename})" if exc.filename else ""
        raise DataError(f"cannot write the index in {out}: {exc.strerror or exc}{where}; the last complete index "
                        f"there (if any) is kept unchanged; {hint} and run `tvt index` again") from exc


def _index(args: argparse.Namespace, encoder, model) -> IndexReport | None:
    """Run the (possibly sharded) update; None on ranks other than 0."""
    import torch

    from tvt.distributed import cleanup
    from tvt.search.sharded import update_index_sharded

    bf16 = args.precision == "bf16" or (args.precision == "auto" and torch.device(args.device).type == "cuda")
    try:
        return update_index_sharded(args.photo_dir, args.out, encoder, model, batch_size=args.batch_size,
                                    num_workers=args.workers, rebuild=args.rebuild, progress=not args.no_progress,
                                    autocast=torch.bfloat16 if bf16 else None,
                                    extra_meta={"precision": "bf16" if bf16 else "fp32"})
    finally:
        cleanup()
