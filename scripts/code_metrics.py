"""Structure figures of the source tree (not tests): the longest functions and files.

    python scripts/code_metrics.py [FOLDER ...]     (default: oat_edge training export runtime bench)

Counts physical lines (a function from its ``def`` line to its last line, docstring included).
Exits 1, naming them, when a file is over MAX_FILE_LINES or a function over MAX_FUNCTION_LINES
(tests/test_code_metrics.py runs it on the product source).
Pairs of duplicated code: ``duplicates --repo FOLDER --most 200`` on each folder's copy, or
run it from the repo root on a tree that holds only the source folders.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ("oat_edge", "training", "export", "runtime", "bench")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def main(argv) -> int:
    folders = [ROOT / f for f in (argv or DEFAULT) if (ROOT / f).is_dir()]
    files, funcs = [], []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(ROOT).as_posix()
            files.append((len(text.splitlines()), rel))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    funcs.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))
    total = sum(n for n, _ in files)
    print(f"{len(files)} Python files, {total} lines")
    print("longest files:")
    for n, name in sorted(files, reverse=True)[:5]:
        print(f"  {n:5d}  {name}")
    print("longest functions:")
    for n, name in sorted(funcs, reverse=True)[:5]:
        print(f"  {n:5d}  {name}")
    over = [f"file {name}: {n} lines (limit {MAX_FILE_LINES})" for n, name in files if n > MAX_FILE_LINES]
    over += [f"function {name}: {n} lines (limit {MAX_FUNCTION_LINES})" for n, name in funcs if n > MAX_FUNCTION_LINES]
    for line in over:
        print("over the limit:", line)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
