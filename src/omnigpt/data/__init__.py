"""Data: corpus recipes (``sources``), token shards and the samplers that read them (``shards``)."""

from omnigpt.data.shards import (
    MANIFEST,
    DataSpec,
    TokenData,
    WindowSampler,
    eval_windows,
    prepare_data,
    split_of,
)
from omnigpt.data.sources import BUILTIN, Document, iter_documents

__all__ = ["BUILTIN", "MANIFEST", "DataSpec", "Document", "TokenData", "WindowSampler", "eval_windows",
           "iter_documents", "prepare_data", "split_of"]
