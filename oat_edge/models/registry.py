from __future__ import annotations

import inspect
from typing import Callable, Dict

from oat_edge.errors import ConfigError

_MODELS: Dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Decorator: register a model constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def _lookup(name: str) -> Callable:
    if name not in _MODELS:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _MODELS[name]


def get_model_defaults(name: str) -> dict:
    """The keyword defaults of a registered constructor (what a checkpoint records)."""
    sig = inspect.signature(_lookup(name))
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def create_model(name: str, **kwargs):
    fn = _lookup(name)
    allowed = set(inspect.signature(fn).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(f"architecture {name!r} does not take {unknown}; it takes {sorted(allowed)}")
    _check_sizes(name, kwargs)
    try:
        return fn(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError) as e:
        # e.g. channels "x", widths [2], mean of the wrong length: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot build {name!r} with arguments {_short(kwargs)}: {first[:300]}") from None


# Bounds on the size arguments, checked before anything is allocated (a checkpoint or
# --arch-kwargs asking for num_classes 1e9 would otherwise allocate hundreds of GB first).
_SIZE_LIMITS = {"num_classes": 100_000, "in_chans": 1024, "code_dim": 65_536, "channels": 65_536}


def _check_sizes(name: str, kwargs: dict) -> None:
    for key, limit in _SIZE_LIMITS.items():
        if key not in kwargs:
            continue
        value = kwargs[key]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit:
                raise ConfigError(f"architecture {name!r}: {key} must be {'integers' if isinstance(value, (list, tuple)) else 'an integer'} "
                                  f"in 1..{limit}, got {_short(value)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
