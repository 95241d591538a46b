"""Retrieval: a `Retriever` protocol with backends by name (tantivy default, elasticsearch, dense,
hybrid), passage ingestion and chunking, index build/add/delete, and the RAG baseline."""

from kinject.retrieval.base import (
    DEFAULT_BACKEND,
    BaseRetriever,
    Doc,
    Hit,
    Retriever,
    backend_names,
    get_backend,
    open_index,
    register_backend,
)

__all__ = [
    "DEFAULT_BACKEND", "BaseRetriever", "Doc", "Hit", "Retriever", "backend_names", "get_backend",
    "open_index", "register_backend",
]
