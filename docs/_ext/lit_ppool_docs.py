"""Sphinx helpers of the lit_ppool documentation.

- ``lit-ppool-help``: a directive that prints the ``--help`` of ``lit-ppool`` or one of its
  subcommands, taken from the parser at build time, so the CLI page cannot drift from the code.
- A check at the end of reading: every name in ``lit_ppool.__all__`` must be documented as
  ``lit_ppool.<name>``; a missing one is a warning (an error under ``-W``).
- References in docstrings are written relative to the module that defines the object
  (``:class:`Skip``` in ``lit_ppool.surgery.report``) or with its defining path
  (``lit_ppool.layers.ppool.PPool2d``), while the reference documents the public names as
  ``lit_ppool.<name>``. :func:`resolve_reference` tries those spellings before Sphinx gives up;
  a reference that resolves under none of them stays a warning.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
from contextlib import contextmanager

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

import lit_ppool

logger = logging.getLogger(__name__)

HELP_WIDTH = "100"  # columns of the rendered --help (argparse reads $COLUMNS)


@contextmanager
def _columns(width: str):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def help_text(command: str) -> str:
    """The ``--help`` text of ``lit-ppool`` (``command="lit-ppool"``) or of ``lit-ppool compare`` / ``export``."""
    from lit_ppool import cli

    with _columns(HELP_WIDTH):
        parser = cli.build_parser() if command == "lit-ppool" else cli.command_parser(command)
        return parser.format_help()


class LitPPoolHelp(SphinxDirective):
    """``.. lit-ppool-help:: compare``: the subcommand's ``--help`` as a literal block."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        command = self.arguments[0]
        try:
            text = help_text(command)
        except KeyError:
            raise self.error(f"lit-ppool-help: unknown command {command!r}; expected 'lit-ppool', 'compare' or 'export'") from None
        return [nodes.literal_block(text, text, language="text")]


def check_public_names(app, env) -> None:
    """Warn for every name of ``lit_ppool.__all__`` that the reference does not document as ``lit_ppool.<name>``."""
    documented = set(env.get_domain("py").objects)
    for name in lit_ppool.__all__:
        if f"lit_ppool.{name}" not in documented:
            logger.warning("lit_ppool.%s is in lit_ppool.__all__ but has no entry in the API reference (docs/api/)", name)


@functools.cache
def _public_paths() -> dict[str, str]:
    """Defining path -> public path (``lit_ppool.layers.ppool.PPool2d`` -> ``lit_ppool.PPool2d``) of every public name."""
    paths = {}
    for name in lit_ppool.__all__:
        obj = getattr(lit_ppool, name)
        if getattr(obj, "__module__", "lit_ppool") != "lit_ppool":
            paths[f"{obj.__module__}.{obj.__qualname__}"] = f"lit_ppool.{name}"
    return paths


def _public(path: str) -> str:
    """``path`` with a defining path of a public name replaced by the public one (members too)."""
    for defining, public in _public_paths().items():
        if path == defining or path.startswith(defining + "."):
            return public + path[len(defining) :]
    return path


def _lookup(dotted: str):
    """The Python object a dotted path names (its longest importable prefix, then attributes), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:  # also a path that is not a module at all
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _scopes(module: str | None, cls: str | None) -> list[str]:
    """Where a relative name in a docstring may be meant: the MRO, the defining module and its packages, ``lit_ppool``."""
    owner = _lookup(f"{module}.{cls}" if module and cls else module or "lit_ppool")
    scopes = []
    if inspect.isclass(owner):
        scopes += [f"{klass.__module__}.{klass.__qualname__}" for klass in inspect.getmro(owner)]
    if owner is not None:
        scopes += [getattr(owner, "__module__", None) or getattr(owner, "__name__", "")]
    packages = [module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)] if module else []
    return [scope for scope in dict.fromkeys([*scopes, module or "", *packages, "lit_ppool", "builtins"]) if scope]


def _defining_path(obj) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if inspect.ismodule(obj):
        return obj.__name__
    return f"{module}.{qualname}" if module and qualname else None


def _member_paths(path: str) -> list[str]:
    """``owner.member`` as documented on each class of the owner's MRO (a property documented on a base class)."""
    owner_path, _, member = path.rpartition(".")
    owner = _lookup(owner_path) if owner_path else None
    if not inspect.isclass(owner):
        return []
    return [_public(f"{klass.__module__}.{klass.__qualname__}.{member}") for klass in inspect.getmro(owner)]


def resolve_reference(app, env, node, contnode):
    """Resolve a ``py`` reference that Sphinx could not (see the module docstring).

    In order: the target as a path relative to each scope of the docstring, written with the
    public path of a public name, or as a member of a base class; the Python object the target
    names there, by its defining and public path; the one documented object whose path ends
    with the target. The role's object type is tried first, then any type (an annotation names
    a ``Literal`` alias as a class). An object that exists but lies outside lit_ppool (torch,
    Lightning, the standard library) is shown as plain text, as there is no inventory to link
    it to offline. Anything else stays a warning.
    """
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    target = node["reftarget"].lstrip(".~")

    def resolved(path):
        for reftype in (node["reftype"], "obj"):
            found = domain.resolve_xref(env, node["refdoc"], app.builder, reftype, path, node, contnode)
            if found is not None:
                return found
        return None

    paths = [target, *(f"{scope}.{target}" for scope in _scopes(node.get("py:module"), node.get("py:class")))]
    for path in paths:
        for candidate in [_public(path), *_member_paths(path)]:
            if candidate in domain.objects and candidate != node["reftarget"] and (found := resolved(candidate)):
                return found
    for path in paths:
        obj = _lookup(path)
        defining = _defining_path(obj) if obj is not None else None
        if defining and _public(defining) in domain.objects and (found := resolved(_public(defining))):
            return found
        if obj is not None and not (defining or path).startswith("lit_ppool"):
            return contnode  # a real object of another package: no link, no warning
    matches = [name for name in domain.objects if name.endswith("." + target)]
    return resolved(matches[0]) if len(matches) == 1 else None


TYPE_LIKE = re.compile(r"[\w.]+(\[.*\])?(\s*\|\s*[\w.]+(\[.*\])?)*")


def keep_attribute_sentence(app, what, name, obj, options, lines) -> None:
    """Undo napoleon's reading of "Text: more" at the start of an attribute's docstring as "type: description".

    Google style allows ``int: The count.`` there; our docstrings write a sentence with a colon
    instead (``The seed the data are drawn with: ...``), which napoleon would turn into a type
    ``The seed the data are drawn with`` (a broken reference). A "type" that does not look like
    one is put back in front of its text. Runs after napoleon.
    """
    if what not in ("attribute", "data", "property"):
        return
    for index, line in enumerate(lines):
        kind = line.strip()
        if kind.startswith(":type: ") and not TYPE_LIKE.fullmatch(kind[len(":type: ") :]):
            text = kind[len(":type: ") :]
            del lines[index]
            if index and not lines[index - 1].strip():
                del lines[index - 1]
            first = next((i for i, old in enumerate(lines) if old.strip()), None)
            if first is None:
                lines.append(text)
            else:
                lines[first] = f"{text}: {lines[first].lstrip()}"
            return


def setup(app):
    app.add_directive("lit-ppool-help", LitPPoolHelp)
    app.connect("env-check-consistency", check_public_names)
    app.connect("missing-reference", resolve_reference)
    app.connect("autodoc-process-docstring", keep_attribute_sentence, priority=600)  # napoleon's runs at 500
    return {"parallel_read_safe": True, "parallel_write_safe": True}
