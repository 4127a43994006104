"""Gradient-masking checks: is the robust accuracy an attack reports a property of the model,
or of gradients that mislead the attack? (Athalye et al. 2018; Carlini et al. 2019, "On
evaluating adversarial robustness".) Three symptoms, each checked per mode:

- ``more_steps``: RA under PGD must not rise with more steps (7 → 20 → 100);
- ``large_eps``: at a very large radius (ε = 1: the attacker may draw any image) RA must be ~0;
- ``transfer``: adversarial images crafted on a separately trained model (black-box for the
  model under test) must not break more images than the white-box worst case does;
- ``black_box``: the gradient-free Square attack, which only reads the logits and runs on the
  images every gradient attack left standing, must not break more than 2 points of them
  (Carlini et al., Croce & Hein: a black-box attack succeeding where white-box ones fail means
  the gradients mislead). Checked at every evaluated mode from the ensemble's own records, so it
  costs nothing extra.

A failed check does not prove masking, and passing them does not prove robustness; a failure
means the reported RA must not be trusted until it is explained. Each check records the
numbers it compared, so a reader can judge the margin.
"""

from __future__ import annotations

from typing import List, Sequence

from oat_edge.errors import ConfigError

PGD_STEPS = (7, 20, 100)
LARGE_EPS = 1.0
LARGE_EPS_MAX_RA = 0.01  # at most 1 % of the images may survive ε = 1
# The gradient-free attack may add at most this much to the gradient attacks' worst case. Some
# gain is normal (different attacks find different images); more means misleading gradients.
BLACK_BOX_MAX_GAIN = 0.02


def _tolerance(n: int) -> float:
    """Slack for seeded-but-different random starts: two images, or half a point."""
    return max(2.0 / n, 0.005)


def black_box_checks(records: Sequence[dict], attacks: Sequence) -> List[dict]:
    """``black_box`` per record: how many images the gradient-free attacks break after every
    gradient attack failed on them (``white_box`` − worst case, both in the record). More than
    ``BLACK_BOX_MAX_GAIN`` means the gradients mislead the white-box attacks there; the worst case,
    which includes the black-box attack, still holds. Empty without a gradient-free attack."""
    free = [a.name for a in attacks if getattr(a, "gradient_free", False)]
    checks: List[dict] = []
    for r in records:
        if not free or "white_box" not in r:
            continue
        white, worst = float(r["white_box"]), float(r["ra"]["worst_case"])
        gain = white - worst
        passed = gain <= BLACK_BOX_MAX_GAIN
        checks.append({"check": "black_box", "lam": r["lam"], "width": r["width"], "passed": passed,
                       "values": {"white_box_ra": white, "worst_case": worst, "attacks": free},
                       "detail": f"{'/'.join(free)} breaks {100 * gain:.1f} points of images every gradient attack "
                       f"missed ({100 * white:.1f} → {100 * worst:.1f} %)"
                       + ("" if passed else f", more than {100 * BLACK_BOX_MAX_GAIN:g}: the gradients mislead the "
                          "white-box attacks here (the worst case includes the black-box attack)")})
    return checks


def masking_checks(model, dataset, modes: Sequence, worst_case: dict, eps: float, step_size: float,
                   surrogate=None, surrogate_lam=None, batch_size: int = 256, seed: int = 0,
                   progress: bool = False, jobs: int = 1) -> List[dict]:
    """Run the checks at each (λ, width) of ``modes``.

    ``worst_case``: {(λ, width): the white-box worst-case RA reported for that mode}.
    ``jobs``: CPU worker processes for the PGD/large-ε runs (``evaluate_model``).
    ``surrogate``: a separately trained model (any OATModel; run at ``surrogate_lam``) for the
    transfer check, which is skipped (and says so) without one. Returns one dict per check:
    ``{"check", "lam", "width", "passed", "values", "detail"}``."""
    from oat_edge.training.attacks import make_attack
    from oat_edge.training.evaluate import evaluate_model

    if not modes:
        raise ConfigError("masking checks need at least one mode")
    tol = _tolerance(int(dataset.tensors[0].shape[0]))
    pgds = [make_attack(f"pgd{k}", eps=eps, step_size=step_size) for k in PGD_STEPS]
    big = make_attack("apgd-ce", eps=LARGE_EPS, steps=20)
    checks: List[dict] = []
    all_recs = evaluate_model(model, dataset, modes=list(modes), attacks=pgds + [big], batch_size=batch_size,
                              progress=progress, seed=seed + 17, jobs=jobs)
    for (lam, width), rec in zip(modes, all_recs):
        ra = rec["ra"]
        steps = [ra[a.name] for a in pgds]
        rising = [f"{a.name} {100 * v:.1f} % > {b.name} {100 * u:.1f} %"
                  for (a, u), (b, v) in zip(zip(pgds, steps), zip(pgds[1:], steps[1:])) if v > u + tol]
        checks.append({"check": "more_steps", "lam": lam, "width": width, "passed": not rising,
                       "values": {a.name: ra[a.name] for a in pgds},
                       "detail": "RA rises with more PGD steps: " + "; ".join(rising) if rising
                       else "RA does not rise with more PGD steps"})
        big_ra = ra[big.name]
        checks.append({"check": "large_eps", "lam": lam, "width": width, "passed": big_ra <= LARGE_EPS_MAX_RA,
                       "values": {"eps": LARGE_EPS, "ra": big_ra},
                       "detail": f"RA {100 * big_ra:.1f} % at ε = {LARGE_EPS:g} (must be ≤ {100 * LARGE_EPS_MAX_RA:g} %)"})
    if surrogate is None:
        checks.append({"check": "transfer", "lam": None, "width": None, "passed": None, "values": {},
                       "detail": "skipped: no separately trained model to transfer from (--surrogate CKPT)"})
        return checks
    return checks + _transfer_checks(model, dataset, modes, worst_case, eps, surrogate, surrogate_lam,
                                     batch_size, seed, tol)


def _transfer_checks(model, dataset, modes, worst_case, eps, surrogate, surrogate_lam, batch_size, seed, tol):
    """RA of every mode on adversarial images crafted once on the surrogate, against the
    white-box worst case: a stronger transfer attack means the gradients misled."""
    import torch

    from oat_edge.training.attacks import make_attack

    x_all, y_all = dataset.tensors[0], dataset.tensors[1]
    n = int(x_all.shape[0])
    source = make_attack("apgd-ce", eps=eps)
    gen = torch.Generator().manual_seed(seed + 29)
    x_adv = torch.cat([source(surrogate, x_all[s : s + batch_size], y_all[s : s + batch_size], surrogate_lam, generator=gen)
                       for s in range(0, n, batch_size)])
    checks: List[dict] = []
    old_width, old_lam = model.width, model.lam
    try:
        for lam, width in modes:
            model.set_width(width)
            with torch.no_grad():
                ok = torch.cat([model(x_adv[s : s + batch_size], lam).argmax(1) == y_all[s : s + batch_size]
                                for s in range(0, n, batch_size)])
            transfer = float(ok.float().mean())
            white = float(worst_case[(lam, width)])
            passed = transfer >= white - tol
            checks.append({"check": "transfer", "lam": lam, "width": width, "passed": passed,
                           "values": {"transfer_ra": transfer, "white_box_ra": white},
                           "detail": f"transfer RA {100 * transfer:.1f} % vs white-box worst case {100 * white:.1f} %"
                           + ("" if passed else ": the black-box attack is stronger")})
    finally:
        model.set_mode(old_lam, old_width)
    return checks


def failed(checks: List[dict]) -> List[dict]:
    return [c for c in checks if c["passed"] is False]
