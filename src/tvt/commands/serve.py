"""`tvt serve`: the sketch-search web page and JSON API over an index (needs the [serve] extra)."""

from __future__ import annotations

import argparse

HELP = "serve a web page where you draw a sketch and see the matching photos of an index"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index made by `tvt index`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", default="auto", help="auto, exact, faiss-flat, faiss-ivf or faiss-hnsw")
    p.add_argument("--checkpoint", help="the index's checkpoint at a new location (checked by sha256)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--max-upload-mb", type=float, default=5.0, help="request body limit in MB (default 5)")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest query image in pixels (default 16M)")


def run(args: argparse.Namespace) -> int:
    from tvt.errors import InputError

    try:
        import uvicorn

        from tvt.serve.app import create_app
    except ImportError as exc:
        raise InputError(f"`tvt serve` needs the serve extra ({exc.name} is missing): "
                         "pip install 'tvt[serve]'") from exc
    from tvt.commands.index import resolve_device
    from tvt.search.retriever import Retriever

    if args.max_upload_mb <= 0 or args.max_pixels < 1:
        raise InputError("--max-upload-mb and --max-pixels must be positive")
    retriever = Retriever.from_index(args.index, checkpoint=args.checkpoint, backend=args.backend,
                                     device=resolve_device(args.device))
    app = create_app(retriever, max_body=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    print(f"serving {len(retriever)} photos on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
