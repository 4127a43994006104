"""Rewrite the generated part of docs/cli.md from the parsers (``oat_edge.cli.cli_reference``).

    python scripts/update_cli_doc.py          # tests/test_cli_doc.py fails when it is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
BEGIN, END = "<!-- BEGIN GENERATED: scripts/update_cli_doc.py -->", "<!-- END GENERATED -->"


def render(text: str) -> str:
    from oat_edge.cli import cli_reference

    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n\n{cli_reference()}\n{END}{tail}"


def main() -> int:
    DOC.write_text(render(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
