"""`tvt search`: find the photos of an index that best match a sketch."""

from __future__ import annotations

import argparse

HELP = "search an index with a sketch image or a QuickDraw stroke file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", metavar="SKETCH", help="sketch image (png, jpg, ...) or stroke file (.ndjson / .json)")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index made by `tvt index`")
    p.add_argument("-k", type=int, default=20, help="number of results (default 20)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--sheet", metavar="OUT_PNG", help="also write a contact sheet of the sketch and its results")
    p.add_argument("--crop", action="store_true", help="crop the sketch to its strokes before searching")
    p.add_argument("--drawing", type=int, default=0, help="which drawing of a stroke file (default 0, the first)")
    p.add_argument("--backend", default="auto", help="auto, exact, faiss-flat, faiss-ivf or faiss-hnsw")
    p.add_argument("--checkpoint", help="the index's checkpoint at a new location (checked by sha256)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    import json

    from tvt.commands.index import resolve_device
    from tvt.errors import InputError
    from tvt.search.retriever import Retriever, contact_sheet, crop_to_ink, load_query_image

    if args.k < 1:
        raise InputError(f"-k must be at least 1, got {args.k}")
    retriever = Retriever.from_index(args.index, checkpoint=args.checkpoint, backend=args.backend,
                                     device=resolve_device(args.device), quiet=args.json)
    image = load_query_image(args.query, drawing_index=args.drawing)
    results = retriever.search(image, args.k, crop=args.crop)
    if args.json:
        print(json.dumps({"query": str(args.query), "backend": retriever.backend.name,
                          "results": [r.to_dict() for r in results]}, indent=1))
    else:
        width = len(str(len(results)))
        for r in results:
            print(f"{r.rank:>{width}}  {r.score:.4f}  {r.path}")
    if args.sheet:
        contact_sheet(crop_to_ink(image) if args.crop else image, results).save(args.sheet)
    return 0
