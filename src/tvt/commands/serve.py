"""`tvt serve`: the sketch-search web page and JSON API over an index (needs the [serve] extra)."""

from __future__ import annotations

import argparse
import sys

HELP = "serve a web page where you draw a sketch and see the matching photos of an index"
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this many seconds
MAX_CONNECTIONS = 64  # more simultaneous connections get 503 instead of piling up
MAX_HEADER_BYTES = 16 * 1024  # h11: the largest request head (line + headers) accepted


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index made by `tvt index`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable), e.g. the public name "
                        "behind a reverse proxy; default: the --host address, localhost, 127.0.0.1 and ::1; "
                        "'*' answers any name (open to DNS rebinding)")
    p.add_argument("--backend", default="auto", help="auto (exact below 50k photos, compact-exact above), exact, "
                   "compact-exact, faiss-flat, faiss-sq8, faiss-ivf or faiss-hnsw")
    p.add_argument("--checkpoint", help="the index's checkpoint, model folder or backbone weights at a new location "
                                        "(checked by sha256)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--max-upload-mb", type=float, default=5.0, help="request body limit in MB (default 5)")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest query image in pixels (default 16M)")


def check_port(host: str, port: int) -> None:
    """InputError unless ``host:port`` can be bound now (said before "serving", not after)."""
    import socket

    from tvt.errors import InputError

    if not 0 < port < 65536:
        raise InputError(f"--port {port} is not a port number (1..65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError as exc:
            busy = exc.errno in (98, 48, 10048)  # EADDRINUSE on Linux, macOS, Windows
            raise InputError(f"cannot listen on {host}:{port}: "
                             + ("the port is in use by another program; pick another with --port"
                                if busy else f"{exc.strerror or exc}; check --host")) from exc


def run(args: argparse.Namespace) -> int:
    from tvt.errors import InputError

    try:
        import uvicorn

        from tvt.serve.app import create_app
        from tvt.serve.protocol import HeadDeadlineProtocol
    except ImportError as exc:
        raise InputError(f"`tvt serve` needs the serve extra ({exc.name} is missing): "
                         "pip install 'tvt[serve]'") from exc
    from tvt.commands.index import resolve_device
    from tvt.search.retriever import Retriever

    if args.max_upload_mb <= 0 or args.max_pixels < 1:
        raise InputError("--max-upload-mb and --max-pixels must be positive")
    check_port(args.host, args.port)
    retriever = Retriever.from_index(args.index, checkpoint=args.checkpoint, backend=args.backend,
                                     device=resolve_device(args.device))
    if len(retriever) == 0:
        raise InputError(f"index {args.index} holds no photos (its folder had no readable images when it was "
                         "indexed); add photos and re-run `tvt index` before serving it")
    from tvt.models.resolve import weak_model_warning

    if (warning := weak_model_warning(getattr(retriever.encoder, "info", {}))) is not None:
        print(warning, file=sys.stderr)
    app = create_app(retriever, max_body=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                     allowed_hosts=[args.host, *args.allowed_host])
    check_port(args.host, args.port)  # loading the model took a while: the port may have been taken since
    print(f"serving {len(retriever)} photos on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_keep_alive=KEEP_ALIVE_S,
                limit_concurrency=MAX_CONNECTIONS, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                http=HeadDeadlineProtocol)
    return 0
