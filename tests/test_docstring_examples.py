"""The ``>>>`` examples in silverrec's docstrings are tests: every module's examples must run."""
import doctest
import importlib
import pkgutil

import pytest

import silverrec

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(silverrec.__path__, prefix="silverrec.") if not m.name.endswith("._C")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
