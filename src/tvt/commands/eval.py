"""`tvt eval`: zero-shot evaluation of a checkpoint (stage C), or intra-modal retrieval."""

from __future__ import annotations

import argparse

from tvt.commands._common import add_config_arguments, load_config

HELP = "evaluate a checkpoint: sketch queries of the unseen classes against their photos"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--checkpoint", help="checkpoint to evaluate (default: eval.checkpoint of the config)")
    p.add_argument("--return-idx", type=int, choices=[0, 1, 2, 3], help="feature choice (spec §2.4); default 0")
    p.add_argument("--binary", type=int, metavar="BITS", help="also report ITQ binary codes of BITS bits (e.g. 64)")
    p.add_argument("--use-train", action="store_true", help="evaluate on the training classes (seen-class retrieval)")
    p.add_argument("--intra-modal", action="store_true", help="image->image and sketch->sketch retrieval instead")
    p.add_argument("--exclude-self", action="store_true",
                   help="intra-modal: remove the query from the gallery (the official protocol keeps it [Q32])")
    p.add_argument("--out", help="output folder for reports (default: <checkpoint dir>/eval)")
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def is_metric(key: str) -> bool:
    """A metric column: ``mAP@...``/``P@...``, also of the binary codes (``binary64/mAP@all``); not the
    counts (``n_queries``, ``binary64/n_gallery``) that sit beside them in the result."""
    return key.rsplit("/", 1)[-1].startswith(("mAP", "P@"))


def run(args: argparse.Namespace) -> int:
    from tvt.errors import ConfigError
    from tvt.eval import evaluate as ev
    from tvt.eval.report import format_table
    from tvt.files import write_json

    cfg = load_config(args)
    if args.checkpoint:
        cfg.eval.checkpoint = args.checkpoint
    if args.return_idx is not None:
        cfg.eval.return_idx = args.return_idx
    if args.binary:
        cfg.eval.binary_bits = args.binary
    if args.use_train:
        cfg.eval.use_train = True
    if args.out:
        cfg.eval.output_dir = args.out
    if not cfg.eval.checkpoint:
        raise ConfigError("no checkpoint: pass --checkpoint PATH or set eval.checkpoint")
    if args.intra_modal:
        result = ev.intra_modal(cfg, cfg.eval.checkpoint, exclude_self=args.exclude_self, device=args.device,
                                progress=not args.no_progress)
        keys = [k for k in result["s2s"] if is_metric(k)]
    else:
        result = ev.evaluate(cfg, cfg.eval.checkpoint, device=args.device, progress=not args.no_progress)
        keys = [k for k in result if is_metric(k)]
        result = {"tvt": result}
    print(format_table({k: v for k, v in result.items()}, keys))
    if args.json_out:
        write_json(args.json_out, result, default=float)
    return 0
