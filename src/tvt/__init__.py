"""tvt: TVT (Three-Way Vision Transformer) for zero-shot sketch-based image retrieval.

The public Python API (each name is imported on first use, so ``import tvt`` loads no torch):

* :func:`load_config` — the typed config: defaults, YAML diffs, ``section.key=value`` overrides;
* :func:`create_model` — a new TVT student by name (``"tvt-vit-s8"`` is the paper's model);
* :func:`load_encoder` — retrieval features from any TVT or ViT checkpoint;
* :func:`train_sketch` (stage A), :func:`train` (stage B), :func:`evaluate` (stage C);
* :func:`retrieval_metrics` — mAP@all, mAP@k and P@k of any features;
* :class:`Retriever` — search an index of your photos with a sketch.

The subpackages hold the rest (``tvt.data``, ``tvt.models``, ``tvt.engine``, ``tvt.eval``,
``tvt.search``), each with its own ``__all__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvt._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "tvt.config:Config",
    "load_config": "tvt.config:load",
    "create_model": "tvt.models.variants:create_model",
    "load_encoder": "tvt.models.encoder:load_encoder",
    "train_sketch": "tvt.engine.train_dino:train",
    "train": "tvt.engine.train_tvt:train",
    "evaluate": "tvt.eval.evaluate:evaluate",
    "retrieval_metrics": "tvt.eval.metrics:retrieval_metrics",
    "Retriever": "tvt.search.retriever:Retriever",
}

__all__ = [
    "__version__",
    "Config",
    "load_config",
    "create_model",
    "load_encoder",
    "train_sketch",
    "train",
    "evaluate",
    "retrieval_metrics",
    "Retriever",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:  # what static type checkers see; tests/test_package.py keeps it equal to _EXPORTS
    from tvt.config import Config
    from tvt.config import load as load_config
    from tvt.engine.train_dino import train as train_sketch
    from tvt.engine.train_tvt import train
    from tvt.eval.evaluate import evaluate
    from tvt.eval.metrics import retrieval_metrics
    from tvt.models.variants import create_model
    from tvt.models.encoder import load_encoder
    from tvt.search.retriever import Retriever
