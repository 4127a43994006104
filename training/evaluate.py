"""Standard accuracy (SA) and robust accuracy (RA, per attack) of a model at each (λ, width).

``evaluate_model`` returns one record per mode, ``{"lam", "width", "sa", "ra": {attack: acc}}``
with accuracies as fractions in [0, 1] over the same images — the format of a bundle's
``calibration.records`` (docs/bundle.md). RA is accuracy on the attacked images of the whole
set (not only of the correctly classified ones). Random starts are seeded, so a run is
reproducible. ``write_eval_json`` writes records plus a header atomically.
"""

from __future__ import annotations

import time
from typing import Iterable, List, Optional, Sequence

from oat_edge.errors import ConfigError, InputError
from oat_edge.fileio import atomic_write_json
from oat_edge.mode import check_lambda, match_width

EVAL_SCHEMA = "oat-edge/eval"
EVAL_SCHEMA_VERSION = 1


def resolve_attacks(attacks: Iterable, dataset=None) -> list:
    """Attack objects for names (or objects), with the dataset's ε/step defaults. Duplicate
    names are refused: they would overwrite each other in the records."""
    from oat_edge.training.attacks import make_attack

    if isinstance(attacks, str):
        attacks = [attacks]
    resolved = [make_attack(a, dataset=dataset) for a in attacks]
    names = [a.name for a in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"attack(s) {', '.join(dupes)} given twice")
    return resolved


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


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False,
    )


def evaluate_model(
    model,
    dataset,
    lambdas=None,
    widths=None,
    attacks: Sequence = ("pgd7",),
    batch_size: int = 256,
    max_images: Optional[int] = None,
    progress: bool = True,
    seed: int = 0,
    device=None,
) -> List[dict]:
    """SA and RA per attack for every (λ, width); see the module docstring.

    ``dataset``: an ImageDataset (its ``name`` gives the attack defaults) or any dataset with
    ``.tensors``; the first ``max_images`` images are used. The model's train/eval flags,
    width and λ are restored afterwards."""
    import torch

    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    modes = resolve_modes(model, lambdas, widths)
    attack_objs = resolve_attacks(attacks, getattr(dataset, "name", None))
    x_all, y_all = _dataset_tensors(dataset, max_images)
    if device is None:
        device = next(model.parameters()).device
    n = x_all.shape[0]
    starts = list(range(0, n, int(batch_size)))
    flags = [(m, m.training) for m in model.modules()]
    old_width, old_lam = model.width, model.lam
    records = []
    model.eval()
    try:
        with _progress(progress) as bar:
            task = bar.add_task("", total=len(modes) * (1 + len(attack_objs)) * len(starts))
            for lam, width in modes:
                model.set_width(width)
                tag = f"λ={lam:g} width={width:g}"
                correct = 0
                bar.update(task, description=f"{tag} clean")
                with torch.no_grad():
                    for s in starts:
                        x, y = x_all[s : s + batch_size].to(device), y_all[s : s + batch_size].to(device)
                        correct += int((model(x, lam).argmax(1) == y).sum())
                        bar.advance(task)
                ra = {}
                for k, attack in enumerate(attack_objs):
                    bar.update(task, description=f"{tag} {attack.name}")
                    gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1000 + k)
                    robust = 0
                    for s in starts:
                        x, y = x_all[s : s + batch_size].to(device), y_all[s : s + batch_size].to(device)
                        x_adv = attack(model, x, y, lam, generator=gen)
                        with torch.no_grad():
                            robust += int((model(x_adv, lam).argmax(1) == y).sum())
                        bar.advance(task)
                    ra[attack.name] = robust / n
                records.append({"lam": float(lam), "width": float(width), "sa": correct / n, "ra": ra})
    finally:
        for m, was_training in flags:
            m.training = was_training
        model.set_mode(old_lam, old_width)
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
    }
    if checkpoint is not None:
        header["checkpoint"] = checkpoint
    return header


def write_eval_json(path, records: List[dict], header: Optional[dict] = None) -> None:
    """Write ``{"schema", "schema_version", "created", **header, "records"}`` atomically."""
    doc = {"schema": EVAL_SCHEMA, "schema_version": EVAL_SCHEMA_VERSION,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    doc.update(header or {})
    doc["records"] = [
        {"lam": float(r["lam"]), "width": float(r["width"]), "sa": float(r["sa"]),
         "ra": {k: float(v) for k, v in r["ra"].items()}}
        for r in records
    ]
    atomic_write_json(path, doc)


def plot_tradeoff(records: List[dict], out_dir) -> list:
    """PNG plots of the records (see ``oat_edge.training.plots``); returns their paths."""
    from oat_edge.training.plots import plot_tradeoff as _plot

    return _plot(records, out_dir)
