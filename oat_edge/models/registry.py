"""The architecture registry (timm's habits).

An entry point names its family and the ``model_args`` the variant fixes or defaults; calling
it builds the model with the caller's keywords over those::

    @register_model(WRN, depth=16, widen=8, mean=SVHN_MEAN, std=SVHN_STD)
    def wrn16_8(**kwargs) -> OATWideResNet:
        '''WRN-16-8 (SVHN in the paper).'''

A family (``ModelFamily``) is a class, the keywords a checkpoint records with their defaults in
the order it records them, and the names the variant fixes as structure (depth, blocks per
stage: not recorded, not accepted as keywords). ``get_model_defaults`` reads a variant's
recorded keywords from its family and ``model_args`` alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

from oat_edge.errors import ConfigError

REQUIRED = object()  # a family keyword without a default: each variant's model_args sets it


@dataclass(frozen=True)
class ModelFamily:
    """``cls(**structure, **recorded)``: ``structure`` are the names a variant fixes (taken from
    its ``model_args``) plus ``fixed`` values; ``keywords`` are what a checkpoint records."""

    cls: type
    keywords: Dict[str, Any]
    structure: Tuple[str, ...] = ()
    fixed: Dict[str, Any] = field(default_factory=dict)

    def recorded(self, variant: str, args: Dict[str, Any]) -> Dict[str, Any]:
        """The family's keywords with ``args`` over their defaults, in the family's order."""
        unknown = sorted(set(args) - set(self.keywords) - set(self.structure))
        if unknown:
            raise ConfigError(f"architecture {variant!r} does not take {unknown}")
        recorded = {k: args.get(k, default) for k, default in self.keywords.items()}
        missing = [k for k, v in recorded.items() if v is REQUIRED]
        if missing:
            raise ConfigError(f"architecture {variant!r} needs a value for {missing}")
        return recorded

    def build(self, variant: str, args: Dict[str, Any]):
        structure = {k: tuple(args[k]) if isinstance(args[k], list) else args[k] for k in self.structure}
        return self.cls(**self.fixed, **structure, **self.recorded(variant, args))


@dataclass(frozen=True)
class _Entry:
    family: ModelFamily
    model_args: Dict[str, Any]
    create: Callable


_MODELS: Dict[str, _Entry] = {}


def register_model(family: ModelFamily, **model_args) -> Callable[[Callable], Callable]:
    """Decorator: register an entry point of ``family`` under its function name, with the
    ``model_args`` its variant fixes or defaults. The decorated function becomes the builder."""
    def register(fn: Callable) -> Callable:
        name = fn.__name__
        if name in _MODELS:
            raise ConfigError(f"model {name!r} registered twice")

        @functools.wraps(fn)
        def create(**kwargs):
            return family.build(name, dict(model_args, **kwargs))

        _MODELS[name] = _Entry(family, dict(model_args), create)
        return create
    return register


def list_models() -> list[str]:
    return sorted(_MODELS)


def _lookup(name: str) -> _Entry:
    if name not in _MODELS:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _MODELS[name]


def get_model_defaults(name: str) -> dict:
    """Every keyword of a registered architecture with its default, in the order checkpoints
    record them."""
    entry = _lookup(name)
    return entry.family.recorded(name, {k: v for k, v in entry.model_args.items() if k not in entry.family.structure})


def create_model(name: str, **kwargs):
    fn = _lookup(name).create
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
