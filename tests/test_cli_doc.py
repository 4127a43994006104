"""docs/cli.md lists every subcommand's options as the parsers define them, and the old
spellings of options still work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cli_doc_is_current():
    spec = importlib.util.spec_from_file_location("update_cli_doc", ROOT / "scripts" / "update_cli_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert module.render(text) == text, "docs/cli.md is stale: run python scripts/update_cli_doc.py"


@pytest.mark.parametrize("argv, dest, value", [
    (["export", "c.pt", "-o", "b", "--lambda-grid", "0", "1"], "grid_lambdas", [0.0, 1.0]),
    (["export", "c.pt", "-o", "b", "--bake", "0.3"], "bake_lambdas", [0.3]),
    (["export", "c.pt", "-o", "b", "--batch", "1:2:4"], "batch_profile", "1:2:4"),
    (["build-engines", "b", "--batch", "1:2:4"], "batch_profile", "1:2:4"),
    (["run", "b", "--n", "3"], "count", 3),
    (["bench", "b", "--quiet"], "no_progress", True),
    (["inspect", "b", "--json"], "json", "-"),
    (["sign", "b", "--key", "k"], "key", "k"),
])
def test_old_spellings_still_parse(capsys, argv, dest, value):
    from oat_edge.cli import build_parser

    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert ("deprecated" in err) == (argv[-1] != "--json" and dest not in ("json",))


def test_shared_options_mean_the_same_everywhere():
    import argparse

    from oat_edge.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    seen = {}
    for name in ("run", "verify", "bench", "inspect", "export", "build-engines"):
        for a in sub.choices[name]._actions:
            for flag in ("--backend", "--device", "--threads", "--json", "--no-progress", "--batch-profile"):
                if flag in a.option_strings and a.help != argparse.SUPPRESS:
                    seen.setdefault(flag, set()).add((a.nargs, a.type, a.metavar, a.dest))
    assert all(len(v) == 1 for v in seen.values()), seen


STAGE_CLIS = ("training/cli.py", "training/eval_cli.py", "export/cli.py", "runtime/cli.py", "bench/cli.py",
              "runtime/signing_cli.py", "reproduce/cli.py")


def test_an_option_several_commands_take_is_defined_once_in_cliargs():
    """One spelling, one meaning: an option visible in two or more subcommands comes from
    oat_edge/cliargs.py, never from an add_argument of its own in a stage's CLI."""
    import argparse
    import ast

    from oat_edge.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = {}
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.help != argparse.SUPPRESS:
                for flag in a.option_strings:
                    commands.setdefault(flag, set()).add(name)
    shared = {f for f, names in commands.items() if len(names) > 1} - {"-h", "--help"}
    assert {"--device", "--threads", "--no-progress", "--data-dir", "--json", "--out"} <= shared
    own = []
    for rel in STAGE_CLIS:
        for node in ast.walk(ast.parse((ROOT / rel).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                own += [f"{rel}: {a.value}" for a in node.args if isinstance(a, ast.Constant) and a.value in shared]
    assert not own, "shared options defined outside oat_edge/cliargs.py:\n" + "\n".join(own)
