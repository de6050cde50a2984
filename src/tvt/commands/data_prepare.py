"""``tvt data prepare``: lay out a downloaded benchmark (Sketchy, TU-Berlin, QuickDraw) for tvt."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "lay out a downloaded Sketchy / TU-Berlin / QuickDraw benchmark in the tvt format"

FORMATS = ("sketchy", "tuberlin", "quickdraw-extended", "quickdraw-ndjson")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvt.data.splits import PROTOCOLS  # stdlib only: keeps --help fast

    parser.add_argument("source", metavar="SOURCE", type=Path,
                        help="the downloaded data: a folder (sub-folders are detected) or, for "
                        "quickdraw-ndjson, a folder of <class>.ndjson files or one such file")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="layout of SOURCE (see docs/datasets.md)")
    parser.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS),
                        help="benchmark split whose class files are written")
    parser.add_argument("--out", required=True, type=Path, metavar="ROOT",
                        help="data root; the dataset goes to ROOT/<dataset>/")
    parser.add_argument("--photos", type=Path, metavar="DIR",
                        help="photo folder when it is not inside SOURCE (e.g. EXTEND_image_sketchy, "
                        "ImageResized, QuickDraw_images)")
    parser.add_argument("--mode", choices=("symlink", "copy"), default="symlink",
                        help="link to the source files (default) or copy them")
    parser.add_argument("--split", metavar="NAME",
                        help="on-disk split name, split/NAME_classes.txt (default: the protocol's, "
                        "e.g. zeroshot, random1, random2, sempcyc)")
    parser.add_argument("--size", type=int, default=256, help="rendered sketch size in px (ndjson)")
    parser.add_argument("--line-width", type=float, default=3.0, help="stroke width in px (ndjson)")
    parser.add_argument("--padding", type=int, default=16, help="margin around the drawing in px (ndjson)")
    parser.add_argument("--max-per-class", type=int, metavar="N",
                        help="take at most N files (or drawings) per class and modality, in sorted order")
    parser.add_argument("--allow-missing", action="store_true",
                        help="prepare even when some protocol classes have no folder in the source")
    parser.add_argument("--checksums", action="store_true",
                        help="record a sha256 per file in the manifest (reads every file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace ROOT/<dataset>/{photo,sketch} when they already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _summary(manifest: dict, out: Path) -> str:
    t = manifest["totals"]
    root = out / manifest["dataset"]
    lines = [
        f"prepared {manifest['dataset']} for protocol {manifest['protocol']} "
        f"(split name {manifest['split']!r}) in {root}",
        f"  train: {t['train']['classes']:4d} classes {t['train']['sketches']:8d} sketches "
        f"{t['train']['photos']:8d} photos",
        f"  test:  {t['test']['classes']:4d} classes {t['test']['sketches']:8d} sketches "
        f"{t['test']['photos']:8d} photos",
    ]
    for modality, renamed in manifest["renamed"].items():
        if renamed:
            shown = ", ".join(f"{a!r} -> {b!r}" for a, b in list(renamed.items())[:8])
            more = f" (+{len(renamed) - 8} more)" if len(renamed) > 8 else ""
            lines.append(f"  renamed {modality} folders: {shown}{more}")
    for modality, unknown in manifest["unknown_folders"].items():
        if unknown:
            lines.append(f"  {modality} folders matching no class (not used): {', '.join(unknown)}")
    for modality, missing in manifest["missing_classes"].items():
        if missing:
            lines.append(f"  classes without {modality}s (--allow-missing): {', '.join(missing)}")
    lines += [f"  note: {n}" for n in manifest.get("notes", [])]
    lines.append(f"  manifest: {root / 'manifest.json'}")
    lines.append(f"next: tvt data check {out} --dataset {manifest['dataset']} --split {manifest['split']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tvt.data.prepare import PrepareOptions, prepare

    opts = PrepareOptions(
        mode=args.mode, split=args.split, photos=args.photos, size=args.size,
        line_width=args.line_width, padding=args.padding, max_per_class=args.max_per_class,
        allow_missing=args.allow_missing, checksums=args.checksums, overwrite=args.overwrite,
        progress=not args.quiet,
    )
    manifest = prepare(args.source, args.fmt, args.protocol, args.out, opts)
    print(_summary(manifest, args.out))
    return 0
