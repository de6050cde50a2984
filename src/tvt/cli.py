"""Command-line entry point: ``tvt <command> ...``.

Commands are listed in an explicit registry. Each command module in :mod:`tvt.commands` exposes
``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily so
``tvt --help`` stays fast and an optional extra (FastAPI, FAISS) is only needed by its command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from tvt import __version__
from tvt.errors import TvtError

# (command words) -> module implementing it. Order is the order shown in --help.
COMMANDS: dict[tuple[str, ...], str] = {
    ("demo",): "tvt.commands.demo",
    ("data", "synth"): "tvt.commands.data_synth",
    ("data", "check"): "tvt.commands.data_check",
    ("data", "prepare"): "tvt.commands.data_prepare",
    ("pretrain-sketch",): "tvt.commands.pretrain_sketch",
    ("train",): "tvt.commands.train",
    ("eval",): "tvt.commands.eval",
    ("metrics",): "tvt.commands.metrics",
    ("embed",): "tvt.commands.embed",
    ("export",): "tvt.commands.export",
    ("index",): "tvt.commands.index",
    ("search",): "tvt.commands.search",
    ("serve",): "tvt.commands.serve",
}

GROUP_HELP = {"data": "dataset tools: synth, check, prepare"}


def _build_parser(only: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """Build the parser; with ``only`` set, import just that command's module (fast path)."""
    parser = argparse.ArgumentParser(prog="tvt", description="TVT zero-shot sketch-based image retrieval")
    parser.add_argument("--version", action="version", version=f"tvt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module_name in COMMANDS.items():
        module = importlib.import_module(module_name) if (only is None or words == only) else None
        help_text = getattr(module, "HELP", None) if module else None
        if len(words) == 1:
            p = sub.add_parser(words[0], help=help_text or "", description=help_text)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=GROUP_HELP.get(words[0], ""))
                groups[words[0]] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            p = groups[words[0]].add_parser(words[1], help=help_text or "", description=help_text)
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def _match(argv: Sequence[str]) -> tuple[str, ...] | None:
    for words in COMMANDS:
        if tuple(argv[: len(words)]) == words:
            return words
    return None


def expand_home(args: argparse.Namespace) -> None:
    """Expand a leading ``~`` in every string argument (a shell leaves ``--out=~/x`` and quoted
    ``"~/x"`` alone). Only paths start with ``~``: no option value of tvt does otherwise."""
    for name, value in vars(args).items():
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list) and any(isinstance(v, str) and v.startswith("~") for v in value):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tvt`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = _match(argv)
    try:
        parser = _build_parser(only=words)
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors
        return int(exc.code or 0)
    expand_home(args)
    module = getattr(args, "_module", None)
    if module is None:
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(module.run(args) or 0)
    except TvtError as exc:
        print(f"tvt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # training saves a checkpoint first (tvt.engine.faults)
        print("tvt: interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))  # 143 after SIGTERM, 130 after SIGINT


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
