"""Render every measured figure in README.md and docs/*.md from the committed results files.

A measured figure in the markdown sits between two markers:

    ResNet-34 takes <!-- fig:offgrid.resnet34.sync.offgrid_p50_ms -->5.5<!-- /fig --> ms ...

and docs/figures.json says where it comes from: a results file under the repository, a path into
its JSON, a scale and a format:

    "offgrid.resnet34.sync.offgrid_p50_ms": {"file": "benchmarks/results/offgrid_set_mode.json",
        "path": "runs[model=resnet34,policy=sync].offgrid_us.p50", "scale": 0.001, "format": ".1f"}

A path is dot-separated keys; ``[3]`` indexes a list and ``[k=v,k2=v2]`` picks the one list item
whose fields have those values; ``[*k=v]`` keeps every matching item, the rest of the path is
read from each, and ``"reduce": "min"`` or ``"max"`` makes one figure of them. ``format`` is a
Python format spec, with "," for thousands (",.0f"). ``scale`` multiplies the value first
(default 1).

    python scripts/render_doc_figures.py           # rewrite the figures in place
    python scripts/render_doc_figures.py --check   # exit 1 naming every figure that differs

tests/test_doc_figures.py runs the check, so a figure edited by hand, or a results file rerun
without re-rendering, fails the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "docs/figures.json"
MARKER = re.compile(r"<!-- fig:([A-Za-z0-9_.\-]+) -->(.*?)<!-- /fig -->", re.S)
_STEP = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


class FigureError(Exception):
    pass


def documents(root: Path) -> List[Path]:
    return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def lookup(data: Any, path: str, where: str) -> Any:
    """The value at ``path`` in ``data`` (a list of values after a ``[*k=v]`` step); FigureError
    naming the step that does not resolve."""
    steps = list(_STEP.finditer(path))
    for i, match in enumerate(steps):
        bracket = match.group(2)
        if bracket is not None and bracket.startswith("*"):
            head = path[:match.start()]
            items = lookup(data, head, where) if head else data
            want = dict(part.split("=", 1) for part in bracket[1:].split(","))
            hits = [x for x in (items if isinstance(items, list) else []) if isinstance(x, dict)
                    and all(k in x and (x[k] == _literal(v) or str(x[k]) == v) for k, v in want.items())]
            if not hits:
                raise FigureError(f"{where}: [{bracket}] matches no item at {path!r}")
            rest = path[match.end():].lstrip(".")
            return [lookup(x, rest, where) if rest else x for x in hits]
    value = data
    for match in steps:
        key, bracket = match.groups()
        if key is not None:
            if not isinstance(value, dict) or key not in value:
                raise FigureError(f"{where}: no key {key!r} at {path!r}")
            value = value[key]
        elif "=" in bracket:
            want = dict(part.split("=", 1) for part in bracket.split(","))
            hits = [x for x in value if isinstance(x, dict)
                    and all(k in x and (x[k] == _literal(v) or str(x[k]) == v) for k, v in want.items())] \
                if isinstance(value, list) else []
            if len(hits) != 1:
                raise FigureError(f"{where}: [{bracket}] matches {len(hits)} items at {path!r}, not one")
            value = hits[0]
        else:
            try:
                value = value[int(bracket)]
            except (ValueError, IndexError, TypeError, KeyError):
                raise FigureError(f"{where}: no item [{bracket}] at {path!r}") from None
    return value


def render_value(spec: Dict[str, Any], root: Path, cache: Dict[str, Any], key: str) -> str:
    file = spec["file"]
    if file not in cache:
        try:
            cache[file] = json.loads((root / file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise FigureError(f"figure {key}: cannot read {file} ({e})") from None
    value = lookup(cache[file], spec["path"], f"figure {key} ({file})")
    if "reduce" in spec:
        value = {"min": min, "max": max}[spec["reduce"]](value)
    if "scale" in spec:
        value = value * spec["scale"]
    if "format" in spec:
        value = format(value, spec["format"])
    return spec.get("prefix", "") + str(value) + spec.get("suffix", "")


def render(root: Path = ROOT) -> Tuple[Dict[Path, str], List[str], List[str]]:
    """({document: its text with every figure rendered}, [drift messages], [errors])."""
    registry = json.loads((root / REGISTRY).read_text(encoding="utf-8"))
    cache: Dict[str, Any] = {}
    out, drift, errors, used = {}, [], [], set()
    for doc in documents(root):
        text = doc.read_text(encoding="utf-8")
        rel = doc.relative_to(root)

        def replace(m: "re.Match[str]") -> str:
            key, shown = m.group(1), m.group(2)
            used.add(key)
            if key not in registry:
                errors.append(f"{rel}: figure {key} is not in {REGISTRY}")
                return m.group(0)
            try:
                value = render_value(registry[key], root, cache, key)
            except FigureError as e:
                errors.append(f"{rel}: {e}")
                return m.group(0)
            if value != shown:
                line = text.count("\n", 0, m.start()) + 1
                drift.append(f"{rel}:{line}: figure {key} reads {shown!r}; {registry[key]['file']} gives {value!r}")
            return f"<!-- fig:{key} -->{value}<!-- /fig -->"

        out[doc] = MARKER.sub(replace, text)
    for key in sorted(set(registry) - used):
        errors.append(f"{REGISTRY}: figure {key} is used by no document")
    return out, drift, errors


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report figures that differ; change nothing")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rendered, drift, errors = render(args.root)
    for line in errors + drift:
        print(line, file=sys.stderr)
    if errors:
        return 1
    if args.check:
        return 1 if drift else 0
    for doc, text in rendered.items():
        if doc.read_text(encoding="utf-8") != text:
            _atomic_write(doc, text)
            print(f"rendered {doc.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
