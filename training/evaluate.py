"""Standard accuracy (SA) and robust accuracy (RA) of a model at each (λ, width).

``evaluate_model`` returns one record per mode,
``{"lam", "width", "n", "sa", "ra": {attack: acc, ..., "worst_case": acc}, "se": se}`` with
accuracies as fractions in [0, 1] over the same n images — the format of a bundle's
``calibration.records`` (docs/bundle.md).

- ``ra[attack]``: accuracy on that attack's images, over the whole set; for an attack that runs
  only on the survivors of the attacks before it (``square``), the worst case up to it;
- ``ra["worst_case"]``: the robust metric. An image counts only if it is classified correctly
  clean AND under every attack of the ensemble (the per-image worst case of AutoAttack), so it is
  never above SA nor above any single attack's RA;
- ``se``: the binomial standard error of the worst-case RA, sqrt(p(1 − p)/n);
- ``white_box`` (when the ensemble has a gradient-free attack such as ``square``): the worst
  case over the gradient attacks alone, for the black-box masking check.

Random starts are seeded, so a run is reproducible. ``eval_json_doc`` is the records plus a
header, as ``oat-edge eval --json`` writes them. ``masking_checks`` (in
``oat_edge.training.masking``) tests whether the gradients the attacks follow can be trusted.
"""

from __future__ import annotations

import time
import math
from typing import Iterable, List, Optional, Sequence

from oat_edge.errors import ConfigError, InputError
from oat_edge.progress import progress_bar
from oat_edge.mode import check_lambda, match_width

EVAL_SCHEMA = "oat-edge/eval"
EVAL_SCHEMA_VERSION = 2  # 2: worst-case ensemble RA, n and its standard error per record
WORST_CASE = "worst_case"


def resolve_attacks(attacks: Iterable, dataset=None, eps=None, step_size=None, restarts=None) -> list:
    """Attack objects for names (or objects), with the dataset's ε/step defaults. Duplicate
    names are refused: they would overwrite each other in the records."""
    from oat_edge.training.attacks import make_attack

    if isinstance(attacks, str):
        attacks = [attacks]
    resolved = [make_attack(a, eps=eps, step_size=step_size, dataset=dataset, restarts=restarts) for a in attacks]
    if not resolved:
        raise ConfigError("give at least one attack: robust accuracy needs one")
    names = [a.name for a in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"attack(s) {', '.join(dupes)} given twice")
    if WORST_CASE in names:
        raise ConfigError(f"{WORST_CASE!r} is the name of the ensemble's result, not an attack")
    return resolved


def trained_eps(payload: dict) -> Optional[float]:
    """The ε a checkpoint was trained against (its config), or None where it does not say. A
    model is evaluated under its own threat model unless the user asks for another ε: a
    dataset's default may change between versions, a checkpoint's ε does not."""
    eps = (payload.get("config") or {}).get("eps") if isinstance(payload, dict) else None
    return float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) else None


def resolve_modes(model, lambdas=None, widths=None) -> list:
    """[(λ, width)] in evaluation order (width-major). λ defaults to the model's training λ
    set, widths to every trained width; bad values raise ModeError."""
    lams = list(model.train_lambdas) if lambdas is None else [check_lambda(v) for v in _as_list(lambdas)]
    ws = list(model.widths) if widths is None else [match_width(w, model.widths) for w in _as_list(widths)]
    if not lams or not ws:
        raise ConfigError("nothing to evaluate: give at least one λ and one width")
    lams = list(dict.fromkeys(lams))
    ws = list(dict.fromkeys(ws))
    return [(lam, w) for w in ws for lam in lams]


def _as_list(values) -> list:
    if isinstance(values, (int, float)):
        return [values]
    return list(values)


def _dataset_tensors(dataset, max_images):
    x, y = dataset.tensors[0], dataset.tensors[1]
    if max_images is not None:
        if int(max_images) < 1:
            raise ConfigError(f"max_images must be ≥ 1, got {max_images}")
        x, y = x[: int(max_images)], y[: int(max_images)]
    if x.shape[0] == 0:
        raise InputError("the evaluation set is empty")
    return x, y


def default_jobs(device="cpu") -> int:
    """Worker processes for an evaluation: one per CPU core (at most 4) on the CPU, 1 on a GPU."""
    import os

    if str(device).split(":")[0] != "cpu":
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 4))


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n images."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else float("nan")


def evaluate_model(
    model,
    dataset,
    lambdas=None,
    widths=None,
    attacks: Optional[Sequence] = None,
    batch_size: int = 256,
    max_images: Optional[int] = None,
    progress: bool = True,
    seed: int = 0,
    device=None,
    modes: Optional[Sequence] = None,
    jobs: int = 1,
) -> List[dict]:
    """SA, RA per attack and the worst-case RA for every (λ, width); see the module docstring.

    ``dataset``: an ImageDataset (its ``name`` gives the attack defaults) or any dataset with
    ``.tensors``; the first ``max_images`` images are used. ``attacks`` defaults to the
    ensemble ``DEFAULT_ENSEMBLE``. ``modes``: explicit [(λ, width)] instead of the grid
    ``lambdas`` × ``widths``. ``jobs`` > 1 spreads the modes over that many CPU worker
    processes (one torch thread each): small models use one core badly, and every (mode,
    attack) has its own seeded generator, so the records do not depend on ``jobs``. The
    model's train/eval flags, width and λ are restored."""
    import torch

    from oat_edge.training.attacks import DEFAULT_ENSEMBLE

    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    if modes is None:
        modes = resolve_modes(model, lambdas, widths)
    else:
        modes = [(check_lambda(lam), match_width(w, model.widths)) for lam, w in modes]
    attack_objs = resolve_attacks(DEFAULT_ENSEMBLE if attacks is None else attacks, getattr(dataset, "name", None))
    x_all, y_all = _dataset_tensors(dataset, max_images)
    if device is None:
        device = next(model.parameters()).device
    jobs = min(int(jobs), len(modes))
    if jobs > 1 and torch.device(device).type == "cpu":
        return _evaluate_parallel(model, x_all, y_all, modes, attack_objs, int(batch_size), seed, jobs, progress)
    n_batches = math.ceil(x_all.shape[0] / int(batch_size))
    records = []
    with progress_bar(progress, "[bold]eval[/] ", transient=False) as bar:
        task = bar.add_task("", total=len(modes) * (1 + len(attack_objs)) * n_batches)
        for lam, width in modes:
            def step(what, lam=lam, width=width):
                bar.update(task, description=f"λ={lam:g} width={width:g} {what}")
                bar.advance(task)

            records.append(_evaluate_mode(model, x_all, y_all, lam, width, attack_objs, int(batch_size), seed,
                                          device, step))
    return records


def _evaluate_mode(model, x_all, y_all, lam, width, attack_objs, batch_size, seed, device, step=None) -> dict:
    """The record of one (λ, width). Each attack gets its own generator seeded from (seed,
    its index), so a mode's figures are the same whichever process or order computes them."""
    import torch

    n = x_all.shape[0]
    starts = range(0, n, batch_size)
    flags = [(m, m.training) for m in model.modules()]
    old_width, old_lam = model.width, model.lam
    model.eval()
    try:
        model.set_width(width)
        # Each mode's FiLM γ/β computed once: an attack makes hundreds of passes at one λ.
        from oat_edge.models.base import FiLMCached

        net = FiLMCached.wrap(model)
        with torch.no_grad():
            clean_ok = []
            for s in starts:
                x, y = x_all[s : s + batch_size].to(device), y_all[s : s + batch_size].to(device)
                clean_ok.append((net(x, lam).argmax(1) == y).cpu())
                step and step("clean")
        clean_ok = torch.cat(clean_ok)
        robust_all, white_box = clean_ok.clone(), clean_ok.clone()
        ra = {}
        for k, attack in enumerate(attack_objs):
            gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1000 + k)
            # A survivors-only attack sees just the images still robust; the rest keep their verdict.
            idx = robust_all.nonzero(as_tuple=True)[0] if getattr(attack, "survivors_only", False) else None
            xs, ys = (x_all, y_all) if idx is None else (x_all[idx], y_all[idx])
            ok = []
            for s in starts:
                x, y = xs[s : s + batch_size].to(device), ys[s : s + batch_size].to(device)
                if len(y):
                    x_adv = attack(net, x, y, lam, generator=gen)
                    with torch.no_grad():
                        ok.append((net(x_adv, lam).argmax(1) == y).cpu())
                step and step(attack.name)
            ok = torch.cat(ok) if ok else torch.zeros(0, dtype=torch.bool)
            if idx is not None:
                ok = torch.zeros(n, dtype=torch.bool).index_put_((idx,), ok)
            ra[attack.name] = int(ok.sum()) / n
            robust_all &= ok
            if not getattr(attack, "gradient_free", False):
                white_box &= ok
    finally:
        for m, was_training in flags:
            m.training = was_training
        model.set_mode(old_lam, old_width)
    worst = int(robust_all.sum()) / n
    ra[WORST_CASE] = worst
    record = {"lam": float(lam), "width": float(width), "n": n, "sa": int(clean_ok.sum()) / n, "ra": ra,
              "se": standard_error(worst, n)}
    if any(getattr(a, "gradient_free", False) for a in attack_objs):
        # The gradient attacks' own worst case, for the black-box masking check.
        record["white_box"] = int(white_box.sum()) / n
    return record


_WORKER_STATE: dict = {}


def _worker_init(model, x_all, y_all, attack_objs, batch_size, seed) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER_STATE.update(model=model, x=x_all, y=y_all, attacks=attack_objs, batch_size=batch_size, seed=seed)


def _worker_mode(mode) -> dict:
    st = _WORKER_STATE
    return _evaluate_mode(st["model"], st["x"], st["y"], mode[0], mode[1], st["attacks"], st["batch_size"],
                          st["seed"], "cpu")


def _evaluate_parallel(model, x_all, y_all, modes, attack_objs, batch_size, seed, jobs, progress) -> List[dict]:
    """Modes spread over ``jobs`` spawned processes; records come back in ``modes`` order."""
    import concurrent.futures as cf
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
    records: List[Optional[dict]] = [None] * len(modes)
    with progress_bar(progress, "[bold]eval[/] ", transient=False) as bar, cf.ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_worker_init,
            initargs=(model.cpu(), x_all, y_all, attack_objs, batch_size, seed)) as pool:
        task = bar.add_task(f"{len(modes)} modes on {jobs} processes", total=len(modes))
        futures = {pool.submit(_worker_mode, m): i for i, m in enumerate(modes)}
        for fut in cf.as_completed(futures):
            records[futures[fut]] = fut.result()
            bar.advance(task)
    return records


def eval_header(dataset, attacks, n_images: int, split: Optional[str] = None, checkpoint: Optional[dict] = None) -> dict:
    """The settings a set of records was measured with (the header of the JSON file, and the
    fields of a bundle's ``calibration`` besides ``records``)."""
    attack_objs = resolve_attacks(attacks, getattr(dataset, "name", dataset if isinstance(dataset, str) else None))
    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", None)
    header = {
        "dataset": name,
        "split": split if split is not None else getattr(dataset, "split", None),
        "n_images": int(n_images),
        "attacks": {a.name: {k: v for k, v in a.describe().items() if k != "name"} for a in attack_objs},
        # The robust metric: per image, correct clean and under every attack above.
        "robust_metric": WORST_CASE,
    }
    if checkpoint is not None:
        header["checkpoint"] = checkpoint
    return header


def eval_json_doc(records: List[dict], header: Optional[dict] = None) -> dict:
    """``{"schema", "schema_version", "created", **header, "records"}``."""
    doc = {"schema": EVAL_SCHEMA, "schema_version": EVAL_SCHEMA_VERSION,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    doc.update(header or {})
    doc["records"] = [plain_record(r) for r in records]
    return doc



def plain_record(r: dict) -> dict:
    """A record with plain JSON values (floats, ints)."""
    out = {"lam": float(r["lam"]), "width": float(r["width"]), "sa": float(r["sa"]),
           "ra": {k: float(v) for k, v in r["ra"].items()}}
    if "n" in r:
        out["n"] = int(r["n"])
    if "se" in r:
        out["se"] = float(r["se"])
    if "white_box" in r:
        out["white_box"] = float(r["white_box"])
    return out


def plot_tradeoff(records: List[dict], out_dir) -> list:
    """PNG plots of the records (see ``oat_edge.training.plots``); returns their paths."""
    from oat_edge.training.plots import plot_tradeoff as _plot

    return _plot(records, out_dir)


def knob_summary(records: List[dict]) -> List[dict]:
    """What the λ knob does at each width: between the smallest and the largest evaluated λ, the
    change in worst-case RA (λ max − λ min) and in SA (λ min − λ max), in points, each with the
    standard error of the difference of two independent binomial figures (a conservative one:
    both figures come from the same images, which correlates them positively)."""
    by_width: dict = {}
    for r in records:
        by_width.setdefault(float(r["width"]), []).append(r)
    out = []
    for width, recs in sorted(by_width.items()):
        lo, hi = min(recs, key=lambda r: r["lam"]), max(recs, key=lambda r: r["lam"])
        if lo is hi:
            continue

        def diff(a, b, n_a, n_b):
            return 100 * (a - b), 100 * math.sqrt(max(a * (1 - a), 0.0) / n_a + max(b * (1 - b), 0.0) / n_b)

        n_lo, n_hi = int(lo.get("n") or 0), int(hi.get("n") or 0)
        if not (n_lo and n_hi):
            raise ConfigError("records need their image count n for the knob's uncertainty")
        ra, ra_se = diff(hi["ra"][WORST_CASE], lo["ra"][WORST_CASE], n_hi, n_lo)
        sa, sa_se = diff(lo["sa"], hi["sa"], n_lo, n_hi)
        out.append({"width": width, "lam_low": float(lo["lam"]), "lam_high": float(hi["lam"]),
                    "ra_gain": ra, "ra_gain_se": ra_se, "sa_cost": sa, "sa_cost_se": sa_se})
    return out


def format_knob(summary: List[dict]) -> List[str]:
    """One line per width: 'knob at width 1 (λ 0 → 1): worst-case RA +41.2 ± 3.4 points, SA −8.1 ± 2.0'."""
    return [f"knob at width {k['width']:g} (λ {k['lam_low']:g} → {k['lam_high']:g}): worst-case RA "
            f"{k['ra_gain']:+.1f} ± {k['ra_gain_se']:.1f} points, SA {-k['sa_cost']:+.1f} ± {k['sa_cost_se']:.1f} points"
            for k in summary]
