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
