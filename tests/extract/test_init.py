"""The package's names load on first use and are the ones it lists."""
from __future__ import annotations

import pytest

from finetext import extract


def test_every_listed_name_resolves_and_nothing_else():
    assert sorted(extract.__all__) == sorted(extract._MODULES)
    for name in extract.__all__:
        assert getattr(extract, name) is getattr(__import__(f"finetext.extract.{extract._MODULES[name]}", fromlist=[name]), name)
    assert set(extract.__all__) <= set(dir(extract))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        extract.nope
