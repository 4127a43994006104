"""Every measured figure in README.md and docs/ is rendered from a committed results file by
scripts/render_doc_figures.py (registry: docs/figures.json). A figure edited by hand, or a
results file rerun without re-rendering the docs, fails here."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("render_doc_figures", ROOT / "scripts" / "render_doc_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_doc_figure_matches_its_results_file():
    _rendered, drift, errors = _script().render(ROOT)
    assert errors == [] and drift == [], "\n".join(errors + drift) + \
        "\nrerun `python scripts/render_doc_figures.py` after a benchmark, never edit a marked figure by hand"


def _copy_tree(tmp_path: Path) -> Path:
    """README, docs and every results file the registry names, in a scratch repository."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "README.md", root / "README.md")
    for md in (ROOT / "docs").glob("*.md"):
        shutil.copy(md, root / "docs" / md.name)
    shutil.copy(ROOT / "docs" / "figures.json", root / "docs" / "figures.json")
    for spec in json.loads((ROOT / "docs" / "figures.json").read_text()).values():
        target = root / spec["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / spec["file"], target)
    return root


def test_a_figure_edited_by_hand_or_a_rerun_results_file_is_drift(tmp_path):
    mod = _script()
    root = _copy_tree(tmp_path)
    registry = json.loads((root / "docs" / "figures.json").read_text())
    key = "offgrid.resnet34.sync.offgrid_p50_ms"
    readme = (root / "README.md").read_text()
    marked = f"<!-- fig:{key} -->"
    assert marked in readme
    start = readme.index(marked) + len(marked)
    shown = readme[start:readme.index("<!-- /fig -->", start)]

    (root / "README.md").write_text(readme[:start] + "4.4" + readme[start + len(shown):])
    _r, drift, errors = mod.render(root)
    assert errors == [] and len(drift) == 1 and key in drift[0] and "'4.4'" in drift[0]
    assert mod.main(["--check", "--root", str(root)]) == 1
    assert mod.main(["--root", str(root)]) == 0  # re-render: the file's figure is back
    assert (root / "README.md").read_text() == readme
    assert mod.main(["--check", "--root", str(root)]) == 0

    results = root / registry[key]["file"]
    data = json.loads(results.read_text())
    for run in data["runs"]:
        if run["model"] == "resnet34" and run["policy"] == "sync":
            run["offgrid_us"]["p50"] = 7000.0
    results.write_text(json.dumps(data))
    _r, drift, errors = mod.render(root)
    assert errors == [] and any(key in d and "'7.0'" in d for d in drift)


def test_unknown_keys_ambiguous_paths_and_unused_entries_are_errors(tmp_path):
    mod = _script()
    root = _copy_tree(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\n<!-- fig:no.such.figure -->1<!-- /fig -->\n")
    registry_path = root / "docs" / "figures.json"
    registry = json.loads(registry_path.read_text())
    registry["unused.one"] = {"file": "benchmarks/results/offgrid_set_mode.json", "path": "runs[model=digits].calls"}
    registry_path.write_text(json.dumps(registry))
    _r, _drift, errors = mod.render(root)
    assert any("no.such.figure" in e and "not in" in e for e in errors)
    assert any("unused.one" in e and "used by no document" in e for e in errors)
    data = json.loads((root / "benchmarks/results/offgrid_set_mode.json").read_text())
    with pytest.raises(mod.FigureError, match="matches 2 items"):
        mod.lookup(data, "runs[model=digits].calls", "test")
    with pytest.raises(mod.FigureError, match="no key"):
        mod.lookup(data, "runs[0].nothing", "test")
    assert mod.lookup(data, "runs[model=digits,policy=async].live_ms.p99", "test") == 0.127


def test_a_figure_over_several_items_takes_their_min_or_max():
    mod = _script()
    data = {"paths": [{"batch": 32, "share": 0.5}, {"batch": 32, "share": 0.9}, {"batch": 1, "share": 0.1}]}
    assert sorted(mod.lookup(data, "paths[*batch=32].share", "test")) == [0.5, 0.9]
    spec = {"file": "r.json", "path": "paths[*batch=32].share", "reduce": "min", "scale": 100, "format": ".0f"}
    assert mod.render_value(spec, ROOT, {"r.json": data}, "k") == "50"
    assert mod.render_value(dict(spec, reduce="max"), ROOT, {"r.json": data}, "k") == "90"
    with pytest.raises(mod.FigureError, match="matches no item"):
        mod.lookup(data, "paths[*batch=8].share", "test")
