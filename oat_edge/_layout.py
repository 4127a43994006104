"""The source checkout's layout: the stages live in top-level folders beside ``oat_edge/``
(``training/``, ``export/``, ``runtime/``, ``bench/``) and install as ``oat_edge.<stage>``
(pyproject.toml, ``wheel.packages``).

When Python imports ``oat_edge`` from a checkout — ``python`` started in the repository root
puts the root first on ``sys.path``, so the checkout's ``oat_edge/`` wins over an installed
copy — the stages are not inside that folder. ``install`` then adds a finder, *after* every
other finder (an installed or editable oat-edge keeps priority), that maps ``oat_edge.<stage>``
to the checkout's ``<stage>/`` folder, so ``import oat_edge.runtime`` works from the root too.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

STAGES = ("training", "export", "runtime", "bench")


class _CheckoutStages(importlib.abc.MetaPathFinder):
    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, stage = fullname.partition(".")
        if prefix != "oat_edge" or stage not in STAGES:
            return None
        init = self.root / stage / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def install(package_dir: Path) -> None:
    """Add the finder when ``package_dir`` (the imported ``oat_edge/``) is a checkout's: no
    stage folder inside it, the stage folders beside it."""
    root = package_dir.parent
    if any((package_dir / s).is_dir() for s in STAGES) or not (root / "runtime" / "__init__.py").is_file():
        return
    if not any(isinstance(f, _CheckoutStages) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutStages(root))
