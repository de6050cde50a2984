"""Lazy public names for a package: ``import tvt`` stays fast, ``tvt.train`` imports torch on first use.

A package lists its public names once, as ``{name: "module:attribute"}``; :func:`lazy_exports`
returns the ``__getattr__`` and ``__dir__`` that import the defining module on first access (PEP 562)
and cache the value in the package namespace, so later lookups are plain attribute reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any],
                 exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names are ``exports``.

    Args:
        package: the package's ``__name__`` (for the error message).
        namespace: the package's ``globals()``; resolved names are stored there.
        exports: public name -> ``"dotted.module:attribute"``.
    Returns:
        ``__getattr__(name) -> value`` (``AttributeError`` for any other name) and
        ``__dir__() -> sorted names`` (module globals plus the public names).
    """

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = target.partition(":")
        value = getattr(importlib.import_module(module), attribute)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
