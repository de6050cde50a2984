"""Registry of the benchmark class splits shipped with the package.

Each protocol is a folder ``tvt/splits/<name>/`` with ``all_classes.txt`` (the full class list of
the dataset: 125 Sketchy, 250 TU-Berlin, 110 QuickDraw-Extended) and ``test_classes.txt`` (the
unseen classes), one name per line, code-point sorted. Names are the folder names of the original
downloads; see :mod:`tvt.data.names` for the other spellings. Provenance and the counts below come
from spec/splits.md (§2, §7); docs/datasets.md explains the differences between the variants.

``tvt data prepare`` writes ``all_classes.txt`` and ``test_classes.txt`` of the chosen protocol as
``split/all_classes.txt`` and ``split/<Protocol.split>_classes.txt`` of a dataset root (spec §1.1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from tvt.errors import ConfigError, DataError

DATASETS: tuple[str, ...] = ("sketchy", "tuberlin", "quickdraw")


@dataclass(frozen=True)
class Protocol:
    """One benchmark split: which dataset, the on-disk split name, provenance and expected sizes.

    ``unseen_queries`` / ``unseen_gallery`` are the published (or derived) numbers of unseen
    sketches / photos, ``tvt_queries`` the query count after TVT's outlier removal (spec §1.3);
    None where no source gives them.
    """

    name: str
    dataset: str
    split: str
    description: str
    source: str
    status: str
    n_all: int
    n_train: int
    n_test: int
    unseen_queries: int | None = None
    unseen_gallery: int | None = None
    gallery_note: str = ""
    tvt_queries: int | None = None

    @property
    def all_classes(self) -> list[str]:
        """Every class of the dataset, sorted."""
        return list(_read_class_file(self.name, "all_classes.txt"))

    @property
    def test_classes(self) -> list[str]:
        """The held-out (unseen) classes, sorted."""
        return list(_read_class_file(self.name, "test_classes.txt"))

    @property
    def train_classes(self) -> list[str]:
        """all - test, sorted (spec §1.2)."""
        test = set(self.test_classes)
        return [c for c in self.all_classes if c not in test]


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="sketchy_no21",
            dataset="sketchy",
            split="zeroshot",
            description="Sketchy-NO: 21 unseen classes without ImageNet-1K overlap (Yelamarthi et al. ECCV'18)",
            source="AnjanDutta/sem-pcyc test_classes_eccv_2018.txt; buptLinfy/ZSE-SBIR zeroshot0; "
            "sounakdey/doodle2search; aneeshan95/Sketch_LVM; eunyi-lyou/MA-ZS-SBIR (all equal)",
            status="explicit",
            n_all=125, n_train=104, n_test=21,
            unseen_queries=12694, unseen_gallery=10453,
            gallery_note="EXTEND_image_sketchy only; SAKE/ZSE-style lists have 12,553 entries "
            "because they also list the 2,100 originals, which EXTEND already contains",
            tvt_queries=12693,
        ),
        Protocol(
            name="sketchy25_sake",
            dataset="sketchy",
            split="random1",
            description="Sketchy-Extended 25 unseen classes, SAKE / Liu et al. ICCV'19 'zeroshot1'",
            source="qliu24/SAKE dataset/Sketchy/zeroshot1/cname_cid_zero.txt (= buptLinfy/ZSE-SBIR)",
            status="explicit",
            n_all=125, n_train=100, n_test=25,
            unseen_queries=15229, unseen_gallery=14601,
            gallery_note="EXTEND_image_sketchy only; 14,602 unique (class, file) pairs with the "
            "originals; SAKE's list has 17,101 entries (originals listed twice)",
            tvt_queries=15225,
        ),
        Protocol(
            name="sketchy25_sempcyc",
            dataset="sketchy",
            split="sempcyc",
            description="Sketchy-Extended 25 unseen classes, SEM-PCYC / Dutta & Akata CVPR'19 "
            "(12 'val' + 13 'test', seeded draw)",
            source="reproduced seeded draw of AnjanDutta/sem-pcyc src/utils.py (numpy seed 0); "
            "equals the list posted in sem-pcyc#22",
            status="reproduced",
            n_all=125, n_train=100, n_test=25,
            unseen_queries=14421, unseen_gallery=14626,
            gallery_note="derived from the SAKE file lists; EXTEND_image_sketchy only",
            tvt_queries=14420,
        ),
        Protocol(
            name="tuberlin30_sake",
            dataset="tuberlin",
            split="random2",
            description="TU-Berlin-Extended 30 unseen classes, SAKE / Liu et al. ICCV'19",
            source="qliu24/SAKE dataset/TUBerlin/zeroshot/cname_cid_zero.txt (= buptLinfy/ZSE-SBIR)",
            status="explicit",
            n_all=250, n_train=220, n_test=30,
            unseen_queries=2400, unseen_gallery=27989,
        ),
        Protocol(
            name="tuberlin30_sempcyc",
            dataset="tuberlin",
            split="sempcyc",
            description="TU-Berlin-Extended 30 unseen classes, SEM-PCYC / Dutta & Akata CVPR'19 "
            "(15 'val' + 15 'test', seeded draw)",
            source="eunyi-lyou/MA-ZS-SBIR data/tuberlin/test_tuberlin.csv; equals the seeded draw "
            "of AnjanDutta/sem-pcyc src/utils.py (numpy seed 0)",
            status="explicit",
            n_all=250, n_train=220, n_test=30,
            unseen_queries=2400, unseen_gallery=25708,
        ),
        Protocol(
            name="quickdraw30",
            dataset="quickdraw",
            split="zeroshot",
            description="QuickDraw-Extended 80/30 (Dey et al. 'Doodle to Search' CVPR'19)",
            source="sounakdey/doodle2search src/data/zeroshot_classes_quickdraw.txt; "
            "buptLinfy/ZSE-SBIR datasets/QuickDraw/zeroshot (folder spelling 'palm tree')",
            status="explicit",
            n_all=110, n_train=80, n_test=30,
            unseen_queries=92291, unseen_gallery=54151,
        ),
    )
}


@functools.lru_cache(maxsize=None)
def _read_class_file(protocol: str, filename: str) -> tuple[str, ...]:
    """Read one shipped class file; blank lines are ignored (spec [Q30])."""
    try:
        text = resources.files("tvt.splits").joinpath(protocol, filename).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"split file tvt/splits/{protocol}/{filename} is missing from the installed package "
            f"({exc}); reinstall tvt"
        ) from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def protocols_for(dataset: str) -> list[Protocol]:
    """The protocols of one dataset (``sketchy``, ``tuberlin`` or ``quickdraw``), by name."""
    return [p for _, p in sorted(PROTOCOLS.items()) if p.dataset == dataset]


def load_protocol(name: str) -> Protocol:
    """The protocol ``name`` after checking its shipped class files against the published counts.

    Raises ConfigError for an unknown name (listing the known ones) and DataError when the
    installed split files do not have the expected counts, are not disjoint or not a subset.
    """
    if name not in PROTOCOLS:
        known = ", ".join(sorted(PROTOCOLS))
        raise ConfigError(f"unknown split protocol {name!r}; choose one of: {known}")
    protocol = PROTOCOLS[name]
    all_classes, test = protocol.all_classes, protocol.test_classes
    where = f"tvt/splits/{name}"
    if len(set(all_classes)) != len(all_classes) or len(set(test)) != len(test):
        raise DataError(f"{where}: a class file lists the same class twice; reinstall tvt")
    outside = sorted(set(test) - set(all_classes))
    if outside:
        raise DataError(f"{where}/test_classes.txt: classes not in all_classes.txt: {outside}")
    counts = (len(all_classes), len(protocol.train_classes), len(test))
    expected = (protocol.n_all, protocol.n_train, protocol.n_test)
    if counts != expected:
        raise DataError(
            f"{where}: expected all/train/test = {expected[0]}/{expected[1]}/{expected[2]} classes, "
            f"found {counts[0]}/{counts[1]}/{counts[2]}; the installed split files are damaged, "
            "reinstall tvt"
        )
    return protocol
