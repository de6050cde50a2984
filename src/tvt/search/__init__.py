"""Sketch search over your own photos: an on-disk embedding index, search backends, Retriever.

* :func:`update_index` builds or incrementally updates an index directory of a photo folder;
* :class:`PhotoIndex` reads one;
* :func:`make_backend` gives exact (torch), compact-exact (PQ fast scan + exact re-ranking) or FAISS
  search over the embeddings;
* :func:`~tvt.search.sharded.update_index_sharded` splits indexing over torchrun ranks;
* :class:`Retriever` ties index, model and backend together: ``Retriever.from_index(dir).search(q, k)``.
"""

from tvt.search.backends import BACKEND_NAMES, SearchBackend, make_backend
from tvt.search.identity import ModelIdentity
from tvt.search.index import PhotoIndex
from tvt.search.retriever import Retriever, SearchResult, contact_sheet
from tvt.search.update import IndexReport, update_index

__all__ = [
    "BACKEND_NAMES",
    "IndexReport",
    "ModelIdentity",
    "PhotoIndex",
    "Retriever",
    "SearchBackend",
    "SearchResult",
    "contact_sheet",
    "make_backend",
    "update_index",
]
