"""The examples of the README, of the documentation pages and of the docstrings run and say what they claim."""

import doctest
import importlib
import pkgutil
import re

import pytest

import lit_ppool

from helpers.tiny import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
MODULES = sorted(info.name for info in pkgutil.walk_packages(lit_ppool.__path__, "lit_ppool."))


def _python_blocks():
    """(page, index, code) of every ```python block of the README and the docs pages."""
    blocks = []
    for page in PAGES:
        found = re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        blocks += [(page.relative_to(ROOT).as_posix(), index, code) for index, code in enumerate(found)]
    return blocks


BLOCKS = _python_blocks()


@pytest.mark.parametrize("page, index, code", BLOCKS, ids=[f"{page}-{index + 1}" for page, index, _ in BLOCKS])
def test_python_block_runs(page, index, code):
    exec(compile(code, f"{page} python block {index + 1}", "exec"), {})


def test_guides_have_python_blocks():
    pages = {page for page, _, _ in BLOCKS}
    assert {"docs/method.md", "docs/swapping.md", "docs/sharing.md"} <= pages, pages


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": importlib.import_module("torch")}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_public_layers_have_examples():
    for name in ("lit_ppool.functional", "lit_ppool.layers.ppool", "lit_ppool.surgery", "lit_ppool.layers.registry"):
        assert doctest.DocTestFinder().find(importlib.import_module(name)), name


def test_every_public_name_has_an_api_entry():
    """The Sphinx build checks this too (docs/_ext/lit_ppool_docs.py); this catches it without building."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in sorted((DOCS / "api").glob("*.rst")))
    documented = set(re.findall(r"^\.\. auto(?:class|function|exception|data):: lit_ppool\.(\w+)$", text, flags=re.M))
    assert sorted(set(lit_ppool.__all__) - documented) == []


def test_readme_links_point_into_the_tree():
    """The README is the front door: its relative links (into docs/) must reach a file."""
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", README.read_text(encoding="utf-8"))
    assert targets, "the README links into docs/"
    assert [target for target in targets if not (ROOT / target).is_file()] == []


def test_docs_show_the_ci_block_of_the_readme():
    """Getting started and Development repeat the README's second block (what CI runs); they must not drift."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    for page in ("getting-started.md", "development.md"):
        assert blocks[1] in (DOCS / page).read_text(encoding="utf-8"), page
