"""Which implementation of the hot-path pieces the runtime uses: the C++ extension
(``oat_edge.runtime._ext``) or its pure-Python twin (``oat_edge.runtime._fallback``).

- ``OATEDGE_NO_EXT=1``: always the Python fallback.
- ``OATEDGE_REQUIRE_EXT=1`` (CI): the extension must import, or ``load("auto")`` raises.
- otherwise the extension when it imports, else the fallback (a build without a compiler),
  with one ``FallbackWarning`` per process naming why the extension did not import and the fix.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from types import ModuleType

from oat_edge.errors import ConfigError, DependencyError, FallbackWarning

IMPLS = ("auto", "ext", "python")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def ext_import_error() -> "str | None":
    """Why the extension does not import (None when it does)."""
    try:
        importlib.import_module("oat_edge.runtime._ext")
    except ImportError as e:
        return str(e)
    return None


def load(impl: str = "auto") -> ModuleType:
    """The module implementing FilmComputer, ModeRegister, select_mode, in_unit_range."""
    if impl not in IMPLS:
        raise ConfigError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "python" or (impl == "auto" and _env_flag("OATEDGE_NO_EXT") and not _env_flag("OATEDGE_REQUIRE_EXT")):
        from oat_edge.runtime import _fallback

        return _fallback
    try:
        return importlib.import_module("oat_edge.runtime._ext")
    except ImportError as e:
        if impl == "ext" or _env_flag("OATEDGE_REQUIRE_EXT"):
            raise DependencyError(
                f"the oat-edge C++ runtime extension is not built ({e}); rebuild with "
                "`pip install -e . --no-build-isolation` (needs a C++ compiler and nanobind)"
            ) from e
        from oat_edge.runtime import _fallback

        _warn_fallback(str(e))
        return _fallback


_warned = False


def _warn_fallback(error: str) -> None:
    """Say once per process that the Python twin runs instead of the extension, and why."""
    global _warned
    if _warned:
        return
    _warned = True
    here = Path(__file__).resolve().parent
    if here.parent.name != "oat_edge" and (here.parent / "oat_edge").is_dir():
        cause = (f"Python imported oat_edge.runtime from the source checkout {here.parent} (started in the "
                 "repository root, which comes first on sys.path), and the checkout has no built extension")
        fix = ("start Python outside the repository root to use the installed oat-edge, or build the checkout "
               "in place with `pip install -e . --no-build-isolation`")
    else:
        cause = "the extension is not built for this Python"
        fix = "reinstall with `pip install -e . --no-build-isolation` (needs a C++ compiler and nanobind)"
    warnings.warn(f"oat-edge runs the pure-Python twin of its C++ runtime extension (slower mode switching and "
                  f"input checks): {cause} ({error}). Fix: {fix}; set OATEDGE_NO_EXT=1 to choose the twin "
                  "without this warning", FallbackWarning, stacklevel=3)


def impl_name(module: ModuleType) -> str:
    return "python" if module.__name__.endswith("_fallback") else "ext"
