"""The ``lit-ppool`` command: one command line for every subcommand, parsed with jsonargparse.

``lit-ppool --help`` lists the six subcommands. ``fit``, ``validate``, ``test`` and ``predict``
are LightningCLI: :class:`~lit_ppool.training.lightning_cli.PPoolCLI` parses their whole command
line (``--config``, ``--print_config``, every ``--model.*``, ``--data.*`` and ``--trainer.*``).
``compare`` and ``export`` are parsed here, with the options that
:func:`lit_ppool.compare.runner.add_arguments` and :func:`lit_ppool.sharing.export.add_arguments` declare,
and run by :func:`~lit_ppool.compare.runner.run_comparison` and
:func:`~lit_ppool.sharing.export.export_checkpoint`. The imports run one way: this module on top,
then ``compare`` and ``export``, then :mod:`lit_ppool.training.lightning_cli`.

Usage::

    lit-ppool fit --config configs/quickstart.yaml
    lit-ppool compare --config configs/benchmark.yaml --poolings max,avg,p --seeds 10
    lit-ppool export --ckpt_path <run>/checkpoints/last.ckpt --output exported/
    lit-ppool --version
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from collections.abc import Sequence

from jsonargparse import ArgumentParser, DefaultHelpFormatter
from lightning.pytorch import Trainer

from lit_ppool import __version__
from lit_ppool.compare import runner
from lit_ppool.sharing import export
from lit_ppool.training.errors import ConfigError
from lit_ppool.training.lightning_cli import PPoolCLI, run_cli

__all__ = ["PPoolCLI", "build_parser", "main", "run_cli"]

DESCRIPTION = f"""\
lit-ppool {__version__}: train and evaluate smp segmentation models whose pooling layers are
swapped for polynomial pooling (P-pooling) or another pooling of the registry.

  lit-ppool fit --config configs/quickstart.yaml          train (a new run folder each time)
  lit-ppool test --config configs/quickstart.yaml --ckpt_path last
  lit-ppool predict --config CFG --ckpt_path CKPT         palette PNG masks
  lit-ppool fit --config CFG --print_config               the whole configuration
  lit-ppool compare --config CFG --poolings max,avg,p     poolings x seeds, with error bars (compare --help)
  lit-ppool export --ckpt_path CKPT --output DIR          a shareable model folder or ONNX (export --help)
  lit-ppool <subcommand> --help                           every option of a subcommand
"""

# the subcommands that run a Trainer method; PPoolCLI parses their command lines
TRAINER_SUBCOMMANDS = tuple(PPoolCLI.subcommands())

# the subcommands parsed here: name -> the module that declares their options and runs them
COMMANDS = {"compare": runner, "export": export}

# options renamed to LightningCLI's underscore spelling: the old spelling works until the next release, with a warning
RENAMED_OPTIONS = {
    "compare": {"--print-commands": "--print_commands"},
    "export": {"--bake-atol": "--bake_atol", "--example-size": "--example_size"},
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help (each option with its type and default) that keeps the lines of the description and epilog."""


def _first_sentence(text: str) -> str:
    """The first sentence of a docstring (the help line of a subcommand)."""
    paragraph = " ".join(text.split("\n\n", 1)[0].split())
    return paragraph.split(". ", 1)[0].rstrip(".") + "."


def command_parser(name: str) -> ArgumentParser:
    """The parser of ``lit-ppool compare`` or ``lit-ppool export``: the options its module declares."""
    module = COMMANDS[name]
    parser = ArgumentParser(
        prog=f"lit-ppool {name}", description=module.DESCRIPTION, epilog=module.EPILOG, formatter_class=HelpFormatter
    )
    module.add_arguments(parser)
    return parser


def build_parser() -> ArgumentParser:
    """The ``lit-ppool`` parser: every subcommand in its usage line and help, ``compare`` and ``export`` with their options.

    ``fit``, ``validate``, ``test`` and ``predict`` are listed with the first sentence of their
    Trainer method and take no options here: :func:`main` hands their command lines to PPoolCLI.
    """
    parser = ArgumentParser(prog="lit-ppool", description=DESCRIPTION, formatter_class=HelpFormatter, version=__version__)
    subcommands = parser.add_subcommands()
    for name in TRAINER_SUBCOMMANDS:
        summary = _first_sentence(inspect.getdoc(getattr(Trainer, name)) or name)
        subcommands.add_subcommand(name, ArgumentParser(description=summary), help=summary)
    for name, module in COMMANDS.items():
        subcommands.add_subcommand(name, command_parser(name), help=module.SUMMARY)
    return parser


def _new_spellings(args: Sequence[str], renamed: dict[str, str]) -> list[str]:
    """``args`` with every old spelling of a renamed option replaced by the new one, with a FutureWarning."""
    new = []
    for arg in args:
        option, equals, value = arg.partition("=")
        if option in renamed:
            warnings.warn(
                f"lit-ppool: {option} is deprecated and will be removed in the next release; use {renamed[option]}.",
                FutureWarning,
                stacklevel=3,
            )
            arg = f"{renamed[option]}{equals}{value}"
        new.append(arg)
    return new


def _compare(options: dict, overrides: list[str]) -> int:
    """``lit-ppool compare``: bad arguments and configs that fit would reject end with a usage error, before any run."""
    try:
        return runner.run_comparison(**options, overrides=overrides)
    except ConfigError as err:
        command_parser("compare").error(str(err))


def _export(options: dict) -> int:
    """``lit-ppool export``: a missing or foreign checkpoint, or an output that is a file, is one line and exit status 2."""
    try:
        export.export_checkpoint(**options)
    except (ValueError, OSError) as err:
        print(f"lit-ppool export: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``lit-ppool`` console script; returns the exit status (0 unless a command fails).

    Args:
        args: The arguments after ``lit-ppool``, e.g. ``["compare", "--config", "configs/benchmark.yaml"]``;
            ``None`` reads ``sys.argv``. Invalid arguments end with a usage error (``SystemExit(2)``).
    """
    argv = sys.argv[1:] if args is None else [str(arg) for arg in args]
    named = next((arg for arg in argv if arg in (*TRAINER_SUBCOMMANDS, *COMMANDS)), None)
    if named in TRAINER_SUBCOMMANDS:  # its options may come before it too (lit-ppool --config CFG fit)
        run_cli(None if args is None else argv)
        return 0
    argv = _new_spellings(argv, RENAMED_OPTIONS.get(named, {}))
    overrides: list[str] = []
    if named == "compare" and argv[0] == "compare":  # compare's arguments, then the LightningCLI overrides of its runs
        own, overrides = runner.split_overrides(argv[1:])
        argv = ["compare", *own]
    config = build_parser().parse_args(argv)  # --help, --version and bad arguments exit here
    options = config[config.subcommand].as_dict()
    if config.subcommand == "compare":
        return _compare(options, overrides)
    return _export(options)


if __name__ == "__main__":
    raise SystemExit(main())
