"""Stage 1 of finetext: text → HDF5 cache of every layer's hidden states, pooled per document.

Names load on first use (PEP 562), so importing `extract` for its errors or the cache reader does not import
torch: `finetext --help` and `finetext info` start in a fraction of the time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from finetext.lazy import lazy_names

_MODULES = {  # public name -> the module of this package that defines it
    "Cache": "cache", "POOLINGS": "cache", "describe_cache": "cache", "open_cache": "cache", "verify_cache": "cache",
    "CorpusSpec": "corpus", "iter_records": "corpus", "scan": "corpus",
    "CacheFormatError": "errors", "CacheMismatchError": "errors", "InputError": "errors",
    "OutputBusyError": "errors",
    "pool": "pooling",
    "ExtractResult": "run", "ExtractSettings": "run", "extract_corpus": "run", "merge_shards": "run",
}
__all__ = [
    "Cache", "CacheFormatError", "CacheMismatchError", "CorpusSpec", "ExtractResult", "ExtractSettings",
    "InputError", "OutputBusyError", "POOLINGS", "describe_cache", "extract_corpus", "iter_records", "merge_shards",
    "open_cache", "pool", "scan",
    "verify_cache",
]

if TYPE_CHECKING:
    from finetext.extract.cache import POOLINGS, Cache, describe_cache, open_cache, verify_cache
    from finetext.extract.corpus import CorpusSpec, iter_records, scan
    from finetext.extract.errors import CacheFormatError, CacheMismatchError, InputError, OutputBusyError
    from finetext.extract.pooling import pool
    from finetext.extract.run import ExtractResult, ExtractSettings, extract_corpus, merge_shards


__getattr__, __dir__ = lazy_names('finetext.extract', _MODULES, globals())
