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
    return fn(**kwargs)
