"""Evaluation: feature extraction, retrieval metrics, binary codes (ITQ), reports and figures.

User API (``__all__``, each name imported on first use): the metrics of any features
(:func:`retrieval_metrics`, :func:`score_matrix`, and the per-query loop
:func:`reference_metrics` to cross-check them), 64-bit codes (:class:`ITQ`, :func:`fit_itq`,
:func:`hamming_scores`, :func:`binary_retrieval_metrics`), features of a dataset
(:func:`extract_features`), intra-modal retrieval (:func:`intra_modal`) and the table printer
(:func:`format_table`). Stage C on a checkpoint is :func:`tvt.evaluate` (here ``evaluate`` is the
submodule's name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvt._lazy import lazy_exports

_EXPORTS = {
    "retrieval_metrics": "tvt.eval.metrics:retrieval_metrics",
    "score_matrix": "tvt.eval.metrics:score_matrix",
    "reference_metrics": "tvt.eval.metrics_reference:reference_metrics",
    "ITQ": "tvt.eval.binary:ITQ",
    "fit_itq": "tvt.eval.binary:fit_itq",
    "hamming_scores": "tvt.eval.binary:hamming_scores",
    "binary_retrieval_metrics": "tvt.eval.binary:binary_retrieval_metrics",
    "extract_features": "tvt.eval.extract:extract_features",
    "intra_modal": "tvt.eval.evaluate:intra_modal",
    "format_table": "tvt.eval.report:format_table",
}

__all__ = [
    "retrieval_metrics",
    "score_matrix",
    "reference_metrics",
    "ITQ",
    "fit_itq",
    "hamming_scores",
    "binary_retrieval_metrics",
    "extract_features",
    "intra_modal",
    "format_table",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from tvt.eval.binary import ITQ, binary_retrieval_metrics, fit_itq, hamming_scores
    from tvt.eval.evaluate import intra_modal
    from tvt.eval.extract import extract_features
    from tvt.eval.metrics import retrieval_metrics, score_matrix
    from tvt.eval.metrics_reference import reference_metrics
    from tvt.eval.report import format_table
