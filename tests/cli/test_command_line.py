"""The `lit-ppool` command line: one parser (jsonargparse) for every subcommand, its help, spellings and typed lists."""

import ast
import re
from pathlib import Path

import pytest

import lit_ppool
from lit_ppool.cli import DESCRIPTION, build_parser, main
from lit_ppool.compare import runner
from lit_ppool.sharing import export

from helpers.tiny import QUICKSTART

SUBCOMMANDS = ["fit", "validate", "test", "predict", "compare", "export"]


def _help(args, capsys):
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_subcommand_and_keeps_the_description_lines(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # narrower than the description's lines: they must not be reflowed
    out = _help([], capsys)
    lines = out.splitlines()
    assert lines[0] == "usage: lit-ppool {fit,validate,test,predict,compare,export} ..."
    for line in DESCRIPTION.splitlines():
        assert line in lines, line
    listed = [line.split()[0] for line in lines if re.match(r"^    [a-z]+ ", line)]
    assert listed == SUBCOMMANDS


@pytest.mark.parametrize(("command", "options"), [
    ("compare", ["--config", "--poolings NAMES", "--seeds", "--output DIR", "--name", "--print_commands", "--aggregate DIR"]),
    ("export", ["--ckpt_path", "--output", "--format {hub,onnx}", "--bake", "--bake_atol", "--opset", "--example_size H W"]),
])  # fmt: skip
def test_compare_and_export_help(command, options, capsys):
    out = _help([command], capsys)
    assert out.startswith(f"usage: lit-ppool [options] {command} ")
    for option in options:
        assert option in out, option
    assert "--print-commands" not in out and "--bake-atol" not in out and "--example-size" not in out  # one spelling


def test_an_unknown_subcommand_names_all_six(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "bogus" in err and all(name in err for name in SUBCOMMANDS)


# --- compare: typed lists, and the overrides of its runs ---------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    (["--poolings", "max,avg,p", "--seeds", "0,7,9"], (["max", "avg", "p"], [0, 7, 9])),
    (["--poolings", "[max, avg, p]", "--seeds", "[0, 7, 9]"], (["max", "avg", "p"], [0, 7, 9])),
    (["--poolings=max, avg,p", "--seeds=[0,7,9]"], (["max", "avg", "p"], [0, 7, 9])),
    (["--poolings", "p", "--seeds", "5"], (["p"], 5)),  # one name is a list of one; one int is a count
    (["--seeds", "[5]"], (None, [5])),  # a list of one seed
])  # fmt: skip
def test_compare_lists_parse_alike_as_commas_or_yaml(given, expected):
    options = build_parser().parse_args(["compare", *given]).compare
    assert (options.poolings, options.seeds) == expected


def test_bad_seeds_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["compare", "--seeds", "1,two"])
    assert info.value.code == 2 and "count or a list of ints" in capsys.readouterr().err


def test_split_overrides_keeps_the_run_arguments_in_order():
    own, overrides = runner.split_overrides(
        ["--config", "a.yaml", "--trainer.max_steps=2", "--data", "my.yaml", "--poolings=max,p", "--seeds", "3",
         "--print_commands", "--", "--model.pooling_kwargs", "{alpha_init: 2}", "--name", "x"]
    )  # fmt: skip
    assert own == ["--config", "a.yaml", "--poolings=max,p", "--seeds", "3", "--print_commands"]
    assert overrides == ["--trainer.max_steps=2", "--data", "my.yaml", "--model.pooling_kwargs", "{alpha_init: 2}", "--name", "x"]


def test_split_overrides_knows_every_option_of_compare(capsys):
    out = _help(["compare"], capsys)
    options = set(re.findall(r"^  (-[-\w]+)", out, flags=re.MULTILINE)) | {"--help"}
    assert options == set(runner.VALUE_OPTIONS) | set(runner.FLAG_OPTIONS)


def test_compare_passes_the_overrides_between_its_options_to_each_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["compare", "--config", QUICKSTART, "--trainer.max_steps=2", "--poolings", "max,p", "--data", "my.yaml",
            "--seeds", "[3]", "--output", "cmp", "--print_commands"]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "cmp/max/seed_3/run.yaml --trainer.max_steps=2 --data my.yaml --ckpt_path last" in lines[0]
    assert (tmp_path / "cmp" / "p" / "seed_3" / "run.yaml").is_file()


# --- old spellings: still working for one release, with a deprecation message ------------------------------


def test_print_commands_old_spelling_still_works_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(FutureWarning, match="--print-commands is deprecated .* use --print_commands"):
        assert main(["compare", "--config", QUICKSTART, "--poolings", "p", "--seeds", "1", "--print-commands"]) == 0
    assert capsys.readouterr().out.startswith("lit-ppool fit ")


def test_export_old_spellings_still_work_with_a_warning(monkeypatch):
    seen = {}
    monkeypatch.setattr(export, "export_checkpoint", lambda **options: seen.update(options))
    with pytest.warns(FutureWarning) as record:
        assert main(["export", "--ckpt_path", "a.ckpt", "--output", "out", "--bake-atol=0.01", "--example-size", "32", "48"]) == 0
    assert sorted(str(w.message).split()[1] for w in record) == ["--bake-atol", "--example-size"]
    assert (seen["bake_atol"], seen["example_size"]) == (0.01, [32, 48])
    main(["export", "--ckpt_path", "a.ckpt", "--output", "out", "--bake_atol", "0.01", "--example_size", "32", "48"])
    assert (seen["bake_atol"], seen["example_size"]) == (0.01, [32, 48])


# --- the imports run one way ---------------------------------------------------------------------------------


def test_nothing_below_the_command_line_imports_it():
    package = Path(lit_ppool.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if path.name == "cli.py" and path.parent == package:
            continue
        imported = {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import) for alias in node.names}
        assert "lit_ppool.cli" not in imported, path  # compare and export sit below lit_ppool.cli, which assembles them
