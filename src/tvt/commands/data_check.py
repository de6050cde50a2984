"""``tvt data check ROOT --dataset D --split S``: validate a dataset layout and its images."""

from __future__ import annotations

import argparse

HELP = "check a dataset and split: per-class counts, missing folders, unreadable or transparent images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="data root holding <dataset>/{photo,sketch,split}")
    parser.add_argument("--dataset", required=True, help="dataset folder name, e.g. sketchy, tuberlin, quickdraw")
    parser.add_argument("--split", required=True, help="split name: reads split/<split>_classes.txt")
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the report as JSON to OUT")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any problem is found")
    parser.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                        help="only check the layout and count files; do not open every image")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads used to open images (default: min(8, CPU count))")


def run(args: argparse.Namespace) -> int:
    from tvt.data.check import check_dataset, format_report
    from tvt.errors import InputError
    from tvt.files import write_json

    report = check_dataset(args.root, args.dataset, args.split, strict=args.strict,
                           verify_images=args.verify_images, workers=args.workers)
    print(format_report(report))
    if args.json:
        try:
            out = write_json(args.json, report, ensure_ascii=False)
        except OSError as exc:
            raise InputError(f"cannot write the JSON report to {args.json}: {exc}; choose another --json path") from exc
        print(f"report written to {out}")
    return 1 if args.strict and report["problems"] else 0
