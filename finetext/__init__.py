"""finetext: cache every layer of a pretrained transformer once, then train attention-over-layers heads in seconds.

- `finetext.extract`: text -> HDF5 cache of every layer's hidden states, pooled per document.
- `finetext.classify`: cached arrays (n_docs, n_layers, hidden) -> fitted heads (scikit-learn estimators).
- `finetext.pipeline`: the `finetext` command line and its workflows (sweeps, train/evaluate/predict, fine-tuning).

The subpackages live in the repository's top-level folders `extract/`, `classify/` and `pipeline/`; setuptools'
package-dir maps them under this name, so an installation adds no top-level module but `finetext`.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("finetext")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"
