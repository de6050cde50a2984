"""Class-name normalisation and the known spelling aliases of the ZS-SBIR datasets.

The same concept is spelled differently across downloads: ``hot-air_balloon`` (Sketchy),
``hot_air_balloon`` (SEM-PCYC renames), ``hot air balloon`` (TU-Berlin sketches), ``hotairballoon``
(TU-Berlin ``ImageResized`` photos). Most variants differ only in separators and case, so they are
matched through a *key*: the name case-folded with everything but letters and digits removed. The
rest differ in the words themselves (``crocodile``/``crocodilian``, ``motorbike``/``motorcycle``,
``The Eiffel Tower``/``eiffel tower``, typos in ``ImageResized``) and are listed per dataset in
:data:`ALIASES` (source: spec/splits.md §6.3-§6.5).

The canonical spelling of a class is the one in the package split files (the on-disk folder name of
the original download); prepared datasets always use it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tvt.errors import DataError

# dataset -> {alias spelling: canonical class}. Only aliases whose *key* differs from the key of
# the canonical name are needed; separator/case variants are handled by `class_key`.
ALIASES: dict[str, dict[str, str]] = {
    "sketchy": {
        "crocodile": "crocodilian",
        "motorbike": "motorcycle",
        "car": "car_(sedan)",
        "mouse (animal)": "mouse",
        "bear (animal)": "bear",
    },
    "tuberlin": {
        # TU-Berlin-Extended `ImageResized` folder names that are typos or other words (§6.3)
        "spacesshuttle": "space shuttle",
        "wristwatching": "wrist-watch",
        "tromobone": "trombone",
        "chandeler": "chandelier",
        "griaffe": "giraffe",
        "diamod": "diamond",
        "spidar": "spider",
        "mouse": "mouse (animal)",
        "pipe": "pipe (for smoking)",
        # the same concepts as spelled by Sketchy / QuickDraw (§6.5)
        "crocodilian": "crocodile",
        "motorcycle": "motorbike",
        "car": "car (sedan)",
        "bear": "bear (animal)",
    },
    "quickdraw": {
        # Quick, Draw! category names that differ from the QuickDraw-Extended folders (§6.4)
        "crocodile": "crocodilian",
        "motorbike": "motorcycle",
        "The Eiffel Tower": "eiffel tower",
        # the same concepts as spelled by Sketchy / TU-Berlin (§6.5)
        "car (sedan)": "car",
        "mouse (animal)": "mouse",
        "bear (animal)": "bear",
    },
}


def class_key(name: str) -> str:
    """Matching key of a class name: NFKC, case-folded, letters and digits only.

    ``"Hot-Air_Balloon"``, ``"hot air balloon"`` and ``"hotairballoon"`` share the key
    ``"hotairballoon"``; ``"car (sedan)"`` and ``"carsedan"`` share ``"carsedan"``.
    """
    text = unicodedata.normalize("NFKC", name).casefold()
    return "".join(ch for ch in text if ch.isalnum())


@dataclass
class MatchResult:
    """Outcome of matching source folder names against a class list.

    ``mapping``: source name -> canonical class; ``unknown``: source names that match no class;
    ``missing``: classes with no source name; ``renamed``: the subset of ``mapping`` whose source
    name differs from the class name (worth reporting).
    """

    mapping: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def renamed(self) -> dict[str, str]:
        return {src: cls for src, cls in self.mapping.items() if src != cls}


class ClassMatcher:
    """Resolve spelling variants of class names to the canonical names of one class list.

    Order of resolution: exact name, then an alias of ``dataset`` (compared by key), then the key of
    a class. Raises DataError at construction when two classes share a key or an alias would
    shadow a class, since matching would then be ambiguous.
    """

    def __init__(
        self,
        classes: Sequence[str],
        dataset: str | None = None,
        extra_aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.classes = list(classes)
        self._exact = set(self.classes)
        self._by_key: dict[str, str] = {}
        for name in self.classes:
            key = class_key(name)
            if key in self._by_key:
                raise DataError(
                    f"class names {self._by_key[key]!r} and {name!r} differ only in case or "
                    "separators, so folders cannot be matched to them unambiguously; rename one"
                )
            self._by_key[key] = name
        aliases = dict(ALIASES.get(dataset, {})) if dataset else {}
        aliases.update(extra_aliases or {})
        self._alias: dict[str, str] = {}
        for alias, target in aliases.items():
            if target not in self._exact:
                continue  # alias of a class this list does not contain (e.g. a subset)
            key = class_key(alias)
            if key in self._by_key and self._by_key[key] != target:
                raise DataError(
                    f"alias {alias!r} -> {target!r} collides with the class {self._by_key[key]!r}"
                )
            self._alias[key] = target

    def resolve(self, name: str) -> str | None:
        """Canonical class for ``name``, or None when it matches no class."""
        if name in self._exact:
            return name
        key = class_key(name)
        return self._alias.get(key) or self._by_key.get(key)

    def match(self, names: Iterable[str], what: str = "folders") -> MatchResult:
        """Match source names (folder names, file stems) to classes.

        Raises DataError when two source names resolve to the same class (for example both
        ``teddy_bear`` and ``teddy-bear`` exist), naming both, since merging them silently could
        double-count a class.
        """
        result = MatchResult()
        seen: dict[str, str] = {}
        for name in sorted(names):
            cls = self.resolve(name)
            if cls is None:
                result.unknown.append(name)
                continue
            if cls in seen:
                raise DataError(
                    f"{what} {seen[cls]!r} and {name!r} are both spellings of class {cls!r}; "
                    "keep only one of them (or merge their contents) and run again"
                )
            seen[cls] = name
            result.mapping[name] = cls
        result.missing = [c for c in self.classes if c not in seen]
        return result
