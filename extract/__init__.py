"""Stage 1 of finetext: text → HDF5 cache of every layer's hidden states, pooled per document."""
from extract.cache import Cache, describe_cache, open_cache, verify_cache
from extract.corpus import CorpusSpec, iter_records, scan
from extract.errors import CacheFormatError, CacheMismatchError, InputError
from extract.pooling import POOLINGS, pool
from extract.run import ExtractResult, ExtractSettings, extract_corpus

__all__ = [
    "Cache", "CacheFormatError", "CacheMismatchError", "CorpusSpec", "ExtractResult", "ExtractSettings",
    "InputError", "POOLINGS", "describe_cache", "extract_corpus", "iter_records", "open_cache", "pool", "scan",
    "verify_cache",
]
