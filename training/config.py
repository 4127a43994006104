"""Training configuration: one dataclass, its defaults per dataset, and the checks that turn
bad input into one clear ConfigError before any work starts.

Importing this module is cheap (no torch): the CLI builds a config from argparse.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from oat_edge.cliargs import check_device
from oat_edge.errors import ConfigError
from oat_edge.fileio import plain
from oat_edge.lambda_code import S1

METHODS = ("oats", "oat", "pgd-at", "pgd-ats")
SLIMMABLE_METHODS = ("oats", "pgd-ats")  # train several widths with accumulated gradients
CONDITIONED_METHODS = ("oat", "oats")  # λ sampled per sample, FiLM + dual BN
DEFAULT_SLIM_WIDTHS = (0.5, 0.75, 1.0)
DEFAULT_BASELINE_LAMBDA = 1.0
CLEAN_PASSES = ("all", "weighted")  # PGD-AT: pure adversarial cross-entropy

@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the default for this dataset /
    method"; ``resolved()`` fills those in so a checkpoint records the values actually used."""

    dataset: str = "digits"
    method: str = "oats"
    arch: Optional[str] = None  # default: dataset_info(dataset)["default_arch"]
    arch_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra constructor kwargs (e.g. channels)
    widths: Optional[List[float]] = None  # oats/pgd-ats: 0.5 0.75 1.0; oat/pgd-at: 1.0
    lambdas: Optional[List[float]] = None  # oat/oats: the training set S1; pgd-at(s): [1.0]
    epochs: Optional[int] = None
    batch_size: Optional[int] = None  # global batch (split evenly across DDP ranks)
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    attack: Optional[str] = None  # training attack (random start, BN in eval mode); default: the dataset's
    clean_pass: Optional[str] = None  # all: every sample (reference) | weighted: only samples with λ < 1
    film_lr_mult: Optional[float] = None  # FiLM generators' lr relative to lr (reference: 1; digits 10)
    eps: Optional[float] = None  # default: the dataset's
    eps_warmup: Optional[int] = None  # epochs over which the training attack's ε grows to eps (0: none)
    step_size: Optional[Any] = None  # a number, "reference" or "paper" (see resolve_step_size)
    data_dir: Optional[str] = None
    image_size: Optional[int] = None  # own datasets: shorter side to S, centre crop S×S
    val_fraction: float = 0.2  # own datasets: share of each class held out as val
    split_seed: int = 0  # own datasets: seed of the stratified split
    workers: int = 1  # own datasets: decoding threads (the data do not depend on it)
    max_train_images: Optional[int] = None  # a subset (quick runs and tests)
    eval_every: int = 0  # epochs between evaluations on the test split (0: never)
    eval_max_images: int = 500
    device: str = "auto"  # auto | cpu | cuda[:N]
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else fp16) | off | bf16 | fp16
    threads: Optional[int] = None
    progress: bool = True
    out: str = "ckpt.pt"

    # --- derived ----------------------------------------------------------------------------
    def data_options(self) -> Dict[str, Any]:
        """The own-dataset options (ignored by the built-in datasets)."""
        return {"image_size": self.image_size, "val_fraction": self.val_fraction, "split_seed": self.split_seed,
                "workers": self.workers}

    def resolved(self) -> "TrainConfig":
        """A validated copy with every default filled in (the dataset's spec gives the recipe)."""
        from oat_edge.models import list_models
        from oat_edge.training.datasets import get_spec

        cfg = dataclasses.replace(self, arch_kwargs=dict(self.arch_kwargs))
        if cfg.method not in METHODS:
            raise ConfigError(f"unknown training method {cfg.method!r}; choose one of {', '.join(METHODS)}")
        spec = get_spec(cfg.dataset)
        spec.check_options(cfg.data_options())  # bad --image-size etc. fail before any work
        info = spec.static_info(cfg.dataset)
        cfg.arch = cfg.arch or info["default_arch"]
        if cfg.arch not in list_models():
            raise ConfigError(f"unknown architecture {cfg.arch!r}; known: {', '.join(list_models())}")
        _apply_recipe(cfg, spec.recipe, info)
        _check_method_grid(cfg)
        _check_numbers(cfg)
        _check_arch_kwargs(cfg)
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        """Plain values only (lists, not tuples), for the checkpoint."""
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"training config has unknown keys {unknown}")
        return cls(**data)


def _apply_recipe(cfg: TrainConfig, recipe: Dict[str, Any], info: Dict[str, Any]) -> None:
    """Fill the unset schedule, attack and FiLM settings from the dataset's recipe."""
    cfg.epochs = int(recipe["epochs"] if cfg.epochs is None else cfg.epochs)
    cfg.batch_size = int(recipe["batch_size"] if cfg.batch_size is None else cfg.batch_size)
    cfg.lr = float(recipe["lr"] if cfg.lr is None else cfg.lr)
    cfg.eps = float(info["eps"] if cfg.eps is None else cfg.eps)
    if cfg.eps_warmup is None:  # the recipe's share of the run, e.g. 10 of 30 epochs
        share = recipe.get("eps_warmup_share", {}).get(cfg.method, 0.0)
        cfg.eps_warmup = math.ceil(cfg.epochs * share - 1e-9)
    cfg.eps_warmup = int(cfg.eps_warmup)
    if cfg.eps_warmup < 0:
        raise ConfigError(f"eps_warmup must be ≥ 0 epochs, got {cfg.eps_warmup}")
    cfg.attack = str(recipe.get("attack", "pgd7") if cfg.attack is None else cfg.attack)
    cfg.clean_pass = str(recipe.get("clean_pass", "all") if cfg.clean_pass is None else cfg.clean_pass)
    if cfg.method in CONDITIONED_METHODS:  # the recipe's FiLM settings, under the user's own
        cfg.arch_kwargs = {**recipe.get("film_kwargs", {}), **cfg.arch_kwargs}
    cfg.step_size = resolve_step_size(cfg.step_size, info)
    cfg.film_lr_mult = float(recipe.get("film_lr_mult", 1.0) if cfg.film_lr_mult is None else cfg.film_lr_mult)
    if cfg.lambdas is None:
        conditioned = cfg.method in CONDITIONED_METHODS
        cfg.lambdas = list(recipe.get("lambdas", S1)) if conditioned else [DEFAULT_BASELINE_LAMBDA]


def _check_method_grid(cfg: TrainConfig) -> None:
    """The widths and λ values the method trains (one width / one λ for the baselines)."""
    slim = cfg.method in SLIMMABLE_METHODS
    if cfg.widths is None:
        cfg.widths = list(DEFAULT_SLIM_WIDTHS) if slim else [1.0]
    cfg.widths = check_widths(cfg.widths)
    if not slim and cfg.widths != [1.0]:
        raise ConfigError(
            f"method {cfg.method} trains one full-width network; got widths {cfg.widths} "
            f"(use {'oats' if cfg.method == 'oat' else 'pgd-ats'} to train several widths)"
        )
    cfg.lambdas = check_lambdas(cfg.lambdas)
    if cfg.method not in CONDITIONED_METHODS and len(cfg.lambdas) != 1:
        raise ConfigError(
            f"method {cfg.method} trains at one fixed λ; got {cfg.lambdas} (use oat/oats to sample λ)"
        )


def _check_numbers(cfg: TrainConfig) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be ≥ 1, got {getattr(cfg, name)}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ConfigError(f"lr must be a positive number, got {cfg.lr}")
    if not (cfg.film_lr_mult > 0 and math.isfinite(cfg.film_lr_mult)):
        raise ConfigError(f"film_lr_mult must be a positive number, got {cfg.film_lr_mult}")
    if not (cfg.eps >= 0 and cfg.step_size >= 0):
        raise ConfigError(f"eps and step size must be ≥ 0, got {cfg.eps}, {cfg.step_size}")
    if cfg.max_train_images is not None and cfg.max_train_images < 1:
        raise ConfigError(f"max_train_images must be ≥ 1, got {cfg.max_train_images}")
    if cfg.eval_every < 0:
        raise ConfigError(f"eval_every must be ≥ 0, got {cfg.eval_every}")
    if cfg.clean_pass not in CLEAN_PASSES:
        raise ConfigError(f"clean_pass must be one of {', '.join(CLEAN_PASSES)}, got {cfg.clean_pass!r}")
    cfg.device = check_device(cfg.device)
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        raise ConfigError(f"amp must be auto, off, bf16 or fp16, got {cfg.amp!r}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be ≥ 1, got {cfg.threads}")


def _check_arch_kwargs(cfg: TrainConfig) -> None:
    reserved = {"widths", "train_lambdas", "num_classes", "in_chans", "mean", "std"}
    if cfg.method not in CONDITIONED_METHODS:
        reserved |= {"film", "dual_bn"}  # the baselines are unconditioned single-BN networks
    clash = sorted(reserved & set(cfg.arch_kwargs))
    if clash:
        raise ConfigError(
            f"arch kwargs {clash} are set by the method ({cfg.method}) and dataset; "
            "pass --widths/--lambdas for those"
        )


STEP_SIZE_NAMES = ("reference", "paper")


def resolve_step_size(value, info: Dict[str, Any]) -> float:
    """The PGD step: a number, None (the dataset's default), "reference" (the reference code's
    min(1.25ε, ε + 4/255)/7, the default for the paper's datasets) or "paper" (the paper's
    text: 2/255)."""
    if value is None or value == "reference":
        return float(info["step_size"])
    if value == "paper":
        if "step_size_paper" not in info:
            raise ConfigError(f"dataset {info['name']} has no step size from the paper; give a number")
        return float(info["step_size_paper"])
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"step size must be a number, 'reference' or 'paper', got {value!r}") from None


def check_widths(widths) -> List[float]:
    """Sorted unique widths, each a finite number in (0, 1]."""
    try:
        values = sorted({float(w) for w in widths})
    except (TypeError, ValueError):
        raise ConfigError(f"widths must be numbers in (0, 1], got {widths!r}") from None
    bad = [w for w in values if not (math.isfinite(w) and 0.0 < w <= 1.0)]
    if not values or bad:
        raise ConfigError(f"widths must be numbers in (0, 1], got {list(widths)!r}")
    return values


def check_lambdas(lambdas) -> List[float]:
    """Sorted unique λ values, each a finite number in [0, 1]."""
    try:
        values = sorted({float(v) for v in lambdas})
    except (TypeError, ValueError):
        raise ConfigError(f"λ values must be numbers in [0, 1], got {lambdas!r}") from None
    bad = [v for v in values if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
    if not values or bad:
        raise ConfigError(f"λ values must be numbers in [0, 1], got {list(lambdas)!r}")
    return values
