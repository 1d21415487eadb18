"""The README's Python examples and the docstring examples run and say what they claim."""

import doctest
import importlib
import pkgutil
import re

import pytest

import lit_ppool

from helpers.tiny import ROOT

README = ROOT / "README.md"
MODULES = sorted(info.name for info in pkgutil.walk_packages(lit_ppool.__path__, "lit_ppool."))


def _python_blocks():
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index):
    exec(compile(_python_blocks()[index], f"README.md python block {index + 1}", "exec"), {})


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": importlib.import_module("torch")}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_public_layers_have_examples():
    for name in ("lit_ppool.functional", "lit_ppool.layers.ppool", "lit_ppool.surgery", "lit_ppool.layers.registry"):
        assert doctest.DocTestFinder().find(importlib.import_module(name)), name
