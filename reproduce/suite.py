"""What a reproduction suite trains and evaluates (no torch here: ``oat-edge reproduce --help``
stays fast).

A suite is a recipe (the training settings every run shares) plus a list of runs. Each run is
one trained model (one checkpoint) and the modes it is evaluated at; runs are grouped by what
they are (``oat-s1``, ``pgdat-0.2``, ...), one run per group and seed. Three jobs train
nothing: ``timing`` (seconds per epoch, methods interleaved), and ``saliency`` (input-gradient
maps of finished OAT and PGD-AT runs), which waits for the runs it reads.

The figures' groups (paper numbering, docs/reproduction.md):

- Fig. 4 / 8: ``oat-s1`` (dual BN), ``oat-s1-nbn`` (normal BN), ``pgdat-<λ>`` for λ ∈ S1;
- Fig. 5: ``oat-s1`` and ``oat-s2`` evaluated at S3 under every RO interpolation the build has
  (they differ only off the training λ grid, so one trained network serves all), and
  ``pgdat-<λ>`` for λ ∈ S3;
- Fig. 6 / 9: ``oats-s1`` against ``pgdats-<λ>`` at every width;
- Fig. 13: ``oat-s1`` (RO-128) against ``oat-s1-ro16`` and ``oat-s1-scalar``;
- Figs. 10-12: the ``saliency`` job on ``oat-s1`` and ``pgdat-<λ>``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from oat_edge.errors import ConfigError
from oat_edge.lambda_code import S1, S3_UNSEEN

S2 = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
DIGITS_SUITES = ("default", "quick")
FULL_SCALE = ("cifar10", "svhn", "stl10")
SUITE_NAMES = DIGITS_SUITES + FULL_SCALE


@dataclass(frozen=True)
class Recipe:
    """Training and evaluation settings shared by every run of a suite (docs/reproduction.md
    says how they were chosen)."""

    channels: Tuple[int, ...]
    epochs: int
    attack: str  # training attack
    max_train_images: Optional[int]
    batch_size: int
    lr: float
    eval_images: int  # first N test images, evaluated with the default ensemble
    timing_epochs: int  # epochs per method in the interleaved timing job
    saliency_images: int


@dataclass
class Run:
    """One trained model: a TrainConfig's worth of settings and the modes to evaluate."""

    name: str  # unique in the suite: <group>_s<seed>
    group: str
    seed: int
    method: str
    lambdas: List[float]
    widths: Optional[List[float]] = None
    arch_kwargs: Dict[str, Any] = field(default_factory=dict)
    eval_lambdas: List[float] = field(default_factory=list)
    # Extra evaluations of the same weights under another λ interpolation: {encoding: [λ...]}.
    eval_encodings: Dict[str, List[float]] = field(default_factory=dict)
    kind: str = "train"  # train | timing | saliency
    after: List[str] = field(default_factory=list)  # runs that must finish first

    def spec(self, recipe: Recipe) -> Dict[str, Any]:
        """Everything the run's result depends on; a finished run is reused only if this matches."""
        return {"run": asdict(self), "recipe": asdict(recipe)}

    def spec_hash(self, recipe: Recipe) -> str:
        return _hash(self.spec(recipe))

    def train_hash(self, recipe: Recipe) -> str:
        """What the checkpoint depends on: changing only the evaluation (more λ, another
        interpolation) re-evaluates a trained model instead of training it again."""
        run = {k: v for k, v in asdict(self).items() if k not in ("eval_lambdas", "eval_encodings", "after")}
        rec = {k: v for k, v in asdict(recipe).items() if k not in ("eval_images", "timing_epochs", "saliency_images")}
        return _hash({"run": run, "recipe": rec})


def _hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Suite:
    name: str
    recipe: Recipe
    seeds: List[int]
    s1: List[float]
    s2: List[float]
    s3: List[float]
    slim_widths: List[float]
    pgdats_lambdas: List[float]
    saliency_lambdas: List[float]
    runs: List[Run]
    missing: List[str]  # figures left out because this build lacks what they need, with why

    def run(self, name: str) -> Run:
        """The run called ``name`` (ConfigError for an unknown one)."""
        for r in self.runs:
            if r.name == name:
                return r
        raise ConfigError(f"suite {self.name!r} has no run {name!r}")

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "recipe": asdict(self.recipe), "seeds": list(self.seeds), "s1": self.s1,
                "s2": self.s2, "s3": self.s3, "slim_widths": self.slim_widths,
                "pgdats_lambdas": self.pgdats_lambdas, "saliency_lambdas": self.saliency_lambdas,
                "missing": list(self.missing)}


# Chosen by measurement on 2 shared CPU cores, one torch thread per worker (docs/reproduction.md).
RECIPES = {
    "default": Recipe(channels=(16, 32, 64), epochs=15, attack="pgd5", max_train_images=None, batch_size=64,
                      lr=0.05, eval_images=360, timing_epochs=2, saliency_images=64),
    # A smoke test of the whole pipeline: every figure, tiny models, few images, one seed.
    "quick": Recipe(channels=(8, 16, 32), epochs=3, attack="pgd3", max_train_images=640, batch_size=64,
                    lr=0.05, eval_images=60, timing_epochs=1, saliency_images=16),
}


def available_features() -> Dict[str, Any]:
    """What this build offers beyond the core: the λ encodings (model kwarg ``lambda_encoding``)
    and the saliency functions. Absent ones leave their figures out, named in the report."""
    import importlib
    import importlib.util

    from oat_edge import lambda_code

    feats: Dict[str, Any] = {"encodings": list(getattr(lambda_code, "LAMBDA_ENCODINGS", ("ro",)))}
    try:
        feats["saliency"] = importlib.util.find_spec("oat_edge.training.saliency") is not None
    except ModuleNotFoundError:
        feats["saliency"] = False
    return feats


def lam_tag(lam: float) -> str:
    return f"{float(lam):g}"


def build_suite(name: str = "default", seeds: Optional[int] = None, features: Optional[Dict[str, Any]] = None) -> Suite:
    """The runs of a digits suite (``default`` or ``quick``) for ``seeds`` seeds (default 3 and 1)."""
    if name not in DIGITS_SUITES:
        raise ConfigError(f"unknown digits suite {name!r}; choose one of {', '.join(DIGITS_SUITES)}")
    n_seeds = (3 if name == "default" else 1) if seeds is None else int(seeds)
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be ≥ 1, got {n_seeds}")
    feats = available_features() if features is None else features
    recipe = RECIPES[name]
    if name == "default":
        s1, s2, s3 = list(S1), list(S2), list(S3_UNSEEN)
        widths, pgdats_lams, sal_lams = [0.5, 0.75, 1.0], [0.0, 1.0], list(S1)
    else:  # the same figures on a few λ values
        s1, s2, s3 = [0.0, 0.4, 1.0], [0.0, 0.4, 0.8, 1.0], [0.7]
        widths, pgdats_lams, sal_lams = [0.5, 1.0], [1.0], [0.0, 1.0]
    encodings = list(feats.get("encodings", ["ro"]))
    alt_ro = [e for e in encodings if e.startswith("ro") and e != "ro"]
    missing = []
    if not alt_ro:
        missing.append("Fig. 5 alternative λ interpolation: this build's models have no `lambda_encoding` "
                       "besides the RO default (oat_edge.lambda_code.LAMBDA_ENCODINGS)")
    if "scalar" not in encodings:
        missing.append("Fig. 13 scalar λ (no encoding): this build's models have no `lambda_encoding=\"scalar\"`")
    if not feats.get("saliency"):
        missing.append("Figs. 10-12 saliency: this build has no oat_edge.training.saliency "
                       "(saliency_maps, gradient_alignment)")

    runs: List[Run] = []
    for seed in range(n_seeds):
        def add(group, method, lambdas, eval_lambdas, widths=None, arch_kwargs=None, eval_encodings=None):
            runs.append(Run(name=f"{group}_s{seed}", group=group, seed=seed, method=method, lambdas=list(lambdas),
                            widths=None if widths is None else list(widths), arch_kwargs=dict(arch_kwargs or {}),
                            eval_lambdas=list(eval_lambdas), eval_encodings=dict(eval_encodings or {})))

        unseen = {e: list(s3) for e in alt_ro}
        # Fig. 4/8 and 5: OAT on S1 at S1 ∪ S3 (RO-128, dual BN: the method as published).
        add("oat-s1", "oat", s1, sorted(set(s1) | set(s3)), eval_encodings=unseen)
        add("oat-s1-nbn", "oat", s1, s1, arch_kwargs={"dual_bn": False})
        for lam in s1:
            add(f"pgdat-{lam_tag(lam)}", "pgd-at", [lam], [lam])
        # Fig. 5: OAT on S2 at S3, and dedicated PGD-AT at every unseen λ.
        add("oat-s2", "oat", s2, s3, eval_encodings=unseen)
        for lam in s3:
            add(f"pgdat-{lam_tag(lam)}", "pgd-at", [lam], [lam])
        # Fig. 6/9: OATS against PGD-ATS at every width.
        add("oats-s1", "oats", s1, s1, widths=widths)
        for lam in pgdats_lams:
            add(f"pgdats-{lam_tag(lam)}", "pgd-ats", [lam], [lam], widths=widths)
        # Fig. 13: code dimension 16, and λ fed directly.
        add("oat-s1-ro16", "oat", s1, s1, arch_kwargs={"code_dim": 16})
        if "scalar" in encodings:
            add("oat-s1-scalar", "oat", s1, s1, arch_kwargs={"lambda_encoding": "scalar"})
    # Dedicated models at λ values in both S1 and S3 (none in the paper's sets) appear once.
    seen, unique = set(), []
    for r in runs:
        if r.name not in seen:
            seen.add(r.name)
            unique.append(r)
    runs = unique
    runs.append(Run(name="timing", group="timing", seed=0, method="oat", lambdas=s1, widths=widths, kind="timing"))
    if feats.get("saliency"):
        after = [r.name for r in runs if r.seed == 0 and (r.group == "oat-s1" or
                 (r.group.startswith("pgdat-") and float(r.lambdas[0]) in sal_lams))]
        runs.append(Run(name="saliency", group="saliency", seed=0, method="oat", lambdas=sal_lams,
                        kind="saliency", after=after))
    return Suite(name=name, recipe=recipe, seeds=list(range(n_seeds)), s1=s1, s2=s2, s3=s3, slim_widths=widths,
                 pgdats_lambdas=pgdats_lams, saliency_lambdas=sal_lams, runs=runs, missing=missing)


def train_config(run: Run, recipe: Recipe, out: str, threads: int = 1, progress: bool = False):
    """The TrainConfig of a training run."""
    from oat_edge.training.config import TrainConfig

    return TrainConfig(
        dataset="digits", method=run.method, arch="resnet_tiny",
        arch_kwargs={"channels": list(recipe.channels), **run.arch_kwargs},
        widths=run.widths, lambdas=list(run.lambdas), epochs=recipe.epochs, batch_size=recipe.batch_size,
        lr=recipe.lr, seed=run.seed, attack=recipe.attack, max_train_images=recipe.max_train_images,
        device="cpu", threads=threads, progress=progress, out=out,
    )


def eval_modes(run: Run) -> int:
    """Evaluated (λ, width) modes of a run (for the cost estimate)."""
    widths = len(run.widths) if run.widths else 1
    return widths * len(run.eval_lambdas) + sum(len(v) for v in run.eval_encodings.values())


def estimated_cost(run: Run, recipe: Recipe) -> float:
    """Estimated seconds of one core for a run, from the measurements behind the default recipe
    (docs/reproduction.md: channels 16-32-64, PGD-5, one thread: an OAT epoch ≈ 2.6 s, a PGD-AT
    epoch ≈ 2.0 s, a clean epoch ≈ 0.5 s, one evaluated mode on 360 images ≈ 8 s); cost grows
    with width². Used for the overall ETA and ``suite_estimate``."""
    imgs = (recipe.max_train_images or 1437) / 1437
    scale = (recipe.channels[0] / 16) ** 2
    if run.kind == "timing":
        return recipe.timing_epochs * imgs * scale * (2.6 + 2.0 + 2 * 1.8 * 2.3)
    if run.kind == "saliency":
        return 2.0 * len(run.lambdas)
    widths = run.widths or [1.0]
    w2 = sum(w * w for w in widths)
    if run.method in ("oat", "oats"):
        per_epoch = 2.6
    else:
        per_epoch = 0.5 if run.lambdas == [0.0] else 2.0
    evals = (len(run.eval_lambdas) * w2 + sum(len(v) for v in run.eval_encodings.values())) * 8.0 * recipe.eval_images / 360
    overhead = 3.0  # building the trainer and data, checkpoints, rebuilding the model for evaluation
    return overhead + recipe.epochs * per_epoch * imgs * scale * w2 + evals * scale


def suite_estimate(suite: Suite, jobs: int = 2) -> dict:
    """Estimated core-seconds of a suite and the wall time on ``jobs`` idle cores."""
    core = sum(estimated_cost(r, suite.recipe) for r in suite.runs)
    startup = 6.0 * jobs  # spawning workers and importing torch
    return {"core_seconds": round(core), "wall_seconds": round(core / jobs + startup)}
