"""`tvt export`: write an inference-only model folder (safetensors + config.json + model card)."""

from __future__ import annotations

import argparse

HELP = "export a checkpoint as a shareable model folder (weights .safetensors, config.json, README.md card)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="TVT (or ViT) checkpoint file to export")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new, empty, or an earlier export)")
    p.add_argument("--return-idx", type=int, choices=[0, 1, 2, 3], default=0,
                   help="feature the folder gives by default (spec §2.4; default 0, the fusion token)")
    p.add_argument("--licence", default="unspecified",
                   help="licence of the weights for the model card (mind the backbone's and the data's terms)")
    p.add_argument("--metrics", metavar="JSON",
                   help="evaluation results for the card (default: eval/tvt_results.json beside the checkpoint)")


def run(args: argparse.Namespace) -> int:
    from tvt.models.export import export_model

    out = export_model(args.checkpoint, args.out, return_idx=args.return_idx, licence=args.licence,
                       metrics=args.metrics)
    print(f"exported {args.checkpoint} to {out} (model.safetensors, config.json, README.md)")
    return 0
