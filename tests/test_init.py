"""The stages' names load on first use and are the ones they list."""
from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["finetext.extract", "finetext.classify"])
def test_every_listed_name_resolves_and_nothing_else(package):
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(module._MODULES)
    for name in module.__all__:
        defining = importlib.import_module(f"{package}.{module._MODULES[name]}")
        assert getattr(module, name) is getattr(defining, name)
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope
