"""L∞ attacks on images in [0, 1], behind a registry: ``make_attack("apgd-ce", dataset="digits")``.

Registered names (``list_attacks``):

- ``pgd<N>`` — PGD with N steps of a fixed size and a random start (``pgd7``, ``pgd20``, ...);
- ``fgsm`` — one step of size ε from the clean image;
- ``mifgsm`` — MI-FGSM: 10 steps of ε/10, momentum 1.0, no random start;
- ``apgd-ce`` / ``apgd-dlr`` — Auto-PGD with the cross-entropy / DLR loss, 100 steps, restarts;
- ``apgd-t`` — targeted Auto-PGD on the DLR loss against the top-3 other classes;
- ``square`` — the gradient-free Square attack (500 queries): random search on the logits,
  which gradient masking cannot fool. In an ensemble it runs on the images the attacks before
  it left standing, so its figure is the worst case up to it.

ε and the PGD step default to the dataset's (``dataset_info``); without a dataset, the paper's
8/255 and the reference code's step. Every attack runs at a fixed (λ, width) with batch norm in
eval mode and restores the model's train/eval flags (``base.Attack``). Robust accuracy is
reported per attack and as the worst case over an ensemble per image
(``oat_edge.training.evaluate``); PGD-n alone is not a robustness claim.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Optional

from oat_edge.errors import ConfigError
from oat_edge.training.attacks.apgd import APGD, step_checkpoints
from oat_edge.training.attacks.base import Attack
from oat_edge.training.attacks.pgd import SignGradientAttack
from oat_edge.training.attacks.square import Square
from oat_edge.training.datasets.spec import PAPER_EPS, PAPER_STEP, REFERENCE_STEP
MIFGSM_STEPS = 10
APGD_STEPS = 100
APGD_TARGETS = 3
SQUARE_QUERIES = 500
# The ensemble `oat-edge eval` and `export --calibrate` use by default; RA is the per-image
# worst case over all of them (an image counts as robust only if no attack breaks it). Square is
# in it because on digits it breaks images every gradient attack misses (docs/robustness.md);
# apgd-t (three targeted runs) is available by name.
DEFAULT_ENSEMBLE = ("pgd7", "apgd-ce", "apgd-dlr", "square")

_FACTORIES: Dict[str, Callable] = {}
_PGD = re.compile(r"pgd(\d+)$")


def register_attack(name: str):
    """Decorator: ``factory(key, eps, step_size, steps, restarts) -> Attack`` under ``name``."""

    def wrap(fn: Callable) -> Callable:
        if name in _FACTORIES:
            raise ConfigError(f"attack {name!r} registered twice")
        _FACTORIES[name] = fn
        return fn

    return wrap


def list_attacks() -> list:
    return sorted(_FACTORIES)


def attack_names_help() -> str:
    return "pgd7, pgd20, pgd<N>, fgsm, mifgsm, apgd-ce, apgd-dlr, apgd-t, square"


@register_attack("pgd")
def _pgd(key, eps, step_size, steps, restarts):
    n = int(_PGD.match(key).group(1)) if steps is None else steps
    return SignGradientAttack(key, eps, n, step_size, random_start=True)


@register_attack("fgsm")
def _fgsm(key, eps, step_size, steps, restarts):
    return SignGradientAttack(key, eps, 1 if steps is None else steps, eps, random_start=False)


@register_attack("mifgsm")
def _mifgsm(key, eps, step_size, steps, restarts):
    n = MIFGSM_STEPS if steps is None else steps
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"attack 'mifgsm' needs at least one step, got {n!r}")
    return SignGradientAttack(key, eps, n, eps / n, random_start=False, momentum=1.0)


def _apgd(loss):
    def factory(key, eps, step_size, steps, restarts):
        return APGD(key, eps, loss=loss, steps=APGD_STEPS if steps is None else steps,
                    restarts=1 if restarts is None else restarts, targets=APGD_TARGETS)

    return factory


register_attack("apgd-ce")(_apgd("ce"))
register_attack("apgd-dlr")(_apgd("dlr"))
register_attack("apgd-t")(_apgd("dlr-t"))


@register_attack("square")
def _square(key, eps, step_size, steps, restarts):
    return Square(key, eps, queries=SQUARE_QUERIES if steps is None else steps)


def attack_defaults(dataset=None) -> tuple:
    """(eps, step_size) for a dataset name or dataset object; the paper's ε and the reference
    code's step without one."""
    if dataset is None:
        return PAPER_EPS, REFERENCE_STEP
    from oat_edge.training.datasets import static_info

    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", None)
    if name is None:
        raise ConfigError(f"cannot tell which dataset {dataset!r} is (pass its name)")
    info = static_info(name)  # attack defaults need no data
    return float(info["eps"]), float(info["step_size"])


def make_attack(name, eps: Optional[float] = None, step_size: Optional[float] = None,
                steps: Optional[int] = None, dataset=None, restarts: Optional[int] = None) -> Attack:
    """Build an attack by name; unset ε / step size come from ``dataset`` (name or object).
    A custom ε keeps the dataset's step/ε ratio. ``steps`` / ``restarts`` override the
    attack's own defaults (restarts apply to the APGD attacks)."""
    if isinstance(name, Attack):
        return name
    key = str(name).lower().strip()
    d_eps, d_step = attack_defaults(dataset)
    d_step = d_step if eps is None else float(eps) * d_step / d_eps
    eps = d_eps if eps is None else eps
    family = "pgd" if _PGD.match(key) else key
    if family not in _FACTORIES:
        raise ConfigError(f"unknown attack {name!r}; known: {attack_names_help()}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"attack {key!r}: steps must be an integer ≥ 1, got {steps!r}")
    return _FACTORIES[family](key, eps, d_step if step_size is None else step_size, steps, restarts)


__all__ = [
    "APGD", "Attack", "Square", "DEFAULT_ENSEMBLE", "PAPER_EPS", "PAPER_STEP", "REFERENCE_STEP", "SignGradientAttack",
    "attack_defaults", "attack_names_help", "list_attacks", "make_attack", "register_attack", "step_checkpoints",
]
