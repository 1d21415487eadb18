"""Sphinx configuration of the lit_ppool documentation.

Build (CI runs the same with the README's test block): ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
Guides are Markdown (MyST); the API reference is autodoc over the docstrings (Google style, read by napoleon).
Nothing is fetched at build time (no intersphinx): references to torch, Lightning, smp and the
standard library are left unlinked by ``nitpick_ignore_regex``, while every broken reference to a
``lit_ppool`` name, every dead internal link and every public name missing from the reference
is a warning, which ``-W`` turns into a failed build.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # document this tree, not whatever copy is installed
sys.path.insert(0, str(DOCS / "_ext"))

import lit_ppool  # noqa: E402

project = "lit_ppool"
author = "lit_ppool authors"
copyright = "lit_ppool authors"
release = version = lit_ppool.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    "lit_ppool_docs",  # docs/_ext: `lit-ppool --help` pages, and the check that every public name has an entry
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links; a dead one is a warning

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # an override without a docstring of its own is left out, not shown with Lightning's
autosummary_generate = False  # the reference pages are written by hand (docs/api/), grouped like the package
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Every reference must resolve ...
nitpicky = True
# ... except to names outside this project, which would need intersphinx inventories (network).
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|lightning|pytorch_lightning|lightning_fabric|segmentation_models_pytorch|smp|timm|torchmetrics"
     r"|torchdata|numpy|np|PIL|jsonargparse|huggingface_hub|safetensors|wandb|matplotlib|onnx|triton|fsspec|yaml)(\..*)?"),
    (r"py:.*", r"(typing|collections|collections\.abc|pathlib|os|enum|dataclasses|argparse|logging|concurrent|contextlib"
     r"|functools|types|io|re|warnings)\..*"),
    (r"py:.*", r"(None|int|float|str|bool|bytes|dict|list|tuple|set|frozenset|type|object|slice|callable|Callable|Any"
     r"|Iterable|Iterator|Sequence|Mapping|MutableMapping|Path|PathLike|Literal|Optional|Union|Self|Tensor|Module"
     r"|Exception|ValueError|TypeError|KeyError|RuntimeError|FileNotFoundError|OSError|UserWarning|FutureWarning"
     r"|Warning|NotImplementedError|ImportError|ModuleNotFoundError|AttributeError|IndexError|Figure)"),
    (r"py:.*", r"(L|nn|F|pl|np|smp)\..*"),  # the modules' import aliases in annotations (`L.Trainer`, `nn.Module`)
]

html_theme = "furo"
html_title = f"lit_ppool {release}"
html_static_path: list[str] = []
