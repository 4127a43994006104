"""The architecture registry (timm's habits).

An entry point is three lines: its ``model_args`` (what the variant fixes or defaults) merged
with the caller's keywords, handed to its family's builder, which ends in ``build_model``::

    @register_model
    def wrn16_8(**kwargs):
        model_args = dict(depth=16, widen=8, mean=SVHN_MEAN, std=SVHN_STD)
        return _create_wrn("wrn16_8", **dict(model_args, **kwargs))

The keywords a checkpoint records for a variant (``get_model_defaults``) are its family's
keywords, in the family's order, with the entry point's values over the family defaults; what
the family builder passes as structure (depth, blocks per stage) is fixed by the variant and
not recorded.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Dict

from oat_edge.errors import ConfigError

_MODELS: Dict[str, Callable] = {}
REQUIRED = object()  # a family keyword without a default: each variant's model_args sets it
# Set while get_model_defaults runs an entry point: build_model then hands its keywords back
# instead of building (entry points only merge dicts, so running one this way is free).
_ASKING = contextvars.ContextVar("oat_edge_model_keywords", default=False)


class _Keywords(Exception):
    def __init__(self, kwargs: Dict[str, Any]):
        super().__init__("model keywords")
        self.kwargs = kwargs


def register_model(fn: Callable) -> Callable:
    """Decorator: register a model entry point under its function name."""
    if fn.__name__ in _MODELS:
        raise ConfigError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def build_model(cls: type, variant: str, keywords: Dict[str, Any], kwargs: Dict[str, Any], **structure):
    """The last step of every family builder: ``cls(**structure, **recorded)``.

    ``keywords``: the family's keywords with their defaults, in the order checkpoints record
    them; ``kwargs``: the entry point's ``model_args`` merged with the caller's keywords (each
    must be one of ``keywords``); ``structure``: what the variant fixes (not recorded).
    """
    unknown = sorted(set(kwargs) - set(keywords))
    if unknown:
        raise ConfigError(f"architecture {variant!r} does not take {unknown}")
    recorded = {k: kwargs.get(k, default) for k, default in keywords.items()}
    missing = [k for k, v in recorded.items() if v is REQUIRED]
    if missing:
        raise ConfigError(f"architecture {variant!r} needs a value for {missing}")
    if _ASKING.get():
        raise _Keywords(recorded)
    return cls(**structure, **recorded)


def list_models() -> list[str]:
    return sorted(_MODELS)


def _lookup(name: str) -> Callable:
    if name not in _MODELS:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _MODELS[name]


def get_model_defaults(name: str) -> dict:
    """Every keyword of a registered architecture with its default, in the order checkpoints
    record them."""
    fn = _lookup(name)
    token = _ASKING.set(True)
    try:
        fn()
    except _Keywords as answer:
        return dict(answer.kwargs)
    finally:
        _ASKING.reset(token)
    raise ConfigError(f"architecture {name!r}: its entry point does not end in build_model")


def create_model(name: str, **kwargs):
    fn = _lookup(name)
    allowed = set(get_model_defaults(name))
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
