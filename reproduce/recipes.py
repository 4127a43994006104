"""Full-scale recipes: the paper's experiments on its own datasets and networks, as the exact
``torchrun … -m oat_edge train`` and ``python -m oat_edge eval`` commands, with the paper's
published numbers beside them, for a user with GPUs and the datasets to check us.

- ``FULL_SCALE_SUITES``: cifar10 (ResNet-34), svhn (WRN-16-8), stl10 (WRN-40-2). Each lists its
  runs (OAT, OATS, PGD-AT and PGD-ATS dedicated to each λ ∈ S1, and on CIFAR-10 the normal-BN
  OAT ablation) with the hyper-parameters of the dataset's recipe (``get_spec(name).recipe``) (docs/fidelity.md: the paper's
  Appendix A and the reference code), and the numbers of the paper we can cite.
- ``run_full_scale``: prints the commands (``dry_run``) or runs them one after another. Resumable:
  a finished command leaves a marker and is skipped next time; a training that was cut off
  continues from its last epoch checkpoint (``train --resume``).

Nothing here runs at import time or needs torch; it only builds command lines.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from oat_edge.errors import ConfigError
from oat_edge.fileio import atomic_write_text
from oat_edge.lambda_code import S1, S3_UNSEEN
from oat_edge.training.config import DEFAULT_SLIM_WIDTHS

PAPER = "Wang et al., Once-for-All Adversarial Training, NeurIPS 2020"


@dataclass(frozen=True)
class Published:
    """A number from the paper (percent). ``ra`` is the paper's PGD-7 robust accuracy at
    ε = 8/255 — compare it with our ``eval --attacks pgd7`` column, not with the worst case."""

    run: str  # the run of the suite it corresponds to
    setting: str
    sa: Optional[float] = None
    ra: Optional[float] = None
    source: str = PAPER


@dataclass(frozen=True)
class Run:
    """One training run and how it is evaluated."""

    name: str
    method: str
    lambdas: Tuple[float, ...]
    widths: Tuple[float, ...] = (1.0,)
    arch_kwargs: Optional[dict] = None
    eval_lambdas: Tuple[float, ...] = ()  # () = the checkpoint's training λ set


@dataclass(frozen=True)
class Command:
    name: str
    argv: Tuple[str, ...]  # starts with "torchrun" or "python"
    output: str  # the file it writes (relative to the suite's output folder)
    resume_argv: Optional[Tuple[str, ...]] = None  # how to continue it when `output` exists

    def text(self) -> str:
        return shlex.join(self.argv)


def _runs(lambdas: Sequence[float], normal_bn: bool) -> Tuple[Run, ...]:
    seen = tuple(sorted(set(lambdas) | set(S3_UNSEEN)))
    runs = [
        Run("oat", "oat", tuple(lambdas), eval_lambdas=seen),  # Fig. 4/8 and, at S3, Fig. 5
        Run("oats", "oats", tuple(lambdas), DEFAULT_SLIM_WIDTHS),  # Fig. 6/9
    ]
    if normal_bn:  # the dual-BN ablation (one BN for clean and adversarial images)
        runs.append(Run("oat-normal-bn", "oat", tuple(lambdas), arch_kwargs={"dual_bn": False}))
        # The paper's published normal-BN figure (Appendix C) is a model trained without λ = 0
        # (its set S4): the λ = 0 samples are what a single BN cannot serve well.
        runs.append(Run("oat-normal-bn-s4", "oat", tuple(l for l in lambdas if l > 0), arch_kwargs={"dual_bn": False}))
    runs += [Run(f"pgd-at-{lam:g}", "pgd-at", (lam,)) for lam in lambdas]
    runs += [Run(f"pgd-ats-{lam:g}", "pgd-ats", (lam,), DEFAULT_SLIM_WIDTHS) for lam in lambdas]
    runs += [Run(f"pgd-at-{lam:g}", "pgd-at", (lam,)) for lam in S3_UNSEEN]  # Fig. 5's dedicated models
    return tuple(runs)


@dataclass(frozen=True)
class FullScaleSuite:
    name: str
    dataset: str
    arch: str
    paper_model: str
    nproc: int  # default GPUs per training (torchrun --nproc_per_node); the batch is global
    runs: Tuple[Run, ...]
    published: Tuple[Published, ...] = ()
    notes: str = ""
    required_files: Tuple[str, ...] = field(default=())

    @property
    def hyper(self) -> dict:
        """The schedule every run of the suite uses (the dataset's recipe; docs/fidelity.md)."""
        from oat_edge.training.datasets import get_spec

        d = get_spec(self.dataset).recipe
        return {"epochs": int(d["epochs"]), "batch_size": int(d["batch_size"]), "lr": float(d["lr"]),
                "weight_decay": 5e-4, "attack": str(d.get("attack", "pgd7")), "step_size": "reference",
                "clean_pass": str(d.get("clean_pass", "all"))}

    def commands(self, data_dir, seeds: int = 1, nproc: Optional[int] = None) -> List[Command]:
        """Every command of the suite, trainings before evaluations, per seed 0..seeds-1.
        Outputs are relative to the suite's output folder (``seed<k>/<run>.pt`` …)."""
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            raise ConfigError(f"seeds must be an integer ≥ 1, got {seeds!r}")
        n = self.nproc if nproc is None else nproc
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"nproc must be an integer ≥ 1, got {n!r}")
        h = self.hyper
        if h["batch_size"] % n:
            raise ConfigError(f"{self.name}: the global batch {h['batch_size']} does not split over {n} processes")
        data = str(data_dir)
        train, evals = [], []
        for seed in range(seeds):
            for run in self.runs:
                ckpt = f"seed{seed}/{run.name}.pt"
                launch = ("torchrun", f"--nproc_per_node={n}", "-m", "oat_edge", "train")
                argv = launch + (
                    "--dataset", self.dataset, "--arch", self.arch, "--method", run.method,
                    "--lambdas", *[f"{x:g}" for x in run.lambdas], "--widths", *[f"{w:g}" for w in run.widths],
                    "--epochs", str(h["epochs"]), "--batch-size", str(h["batch_size"]), "--lr", f"{h['lr']:g}",
                    "--weight-decay", f"{h['weight_decay']:g}", "--attack", h["attack"],
                    "--step-size", h["step_size"], "--clean-pass", h["clean_pass"], "--seed", str(seed),
                    "--data-dir", data, "--out", ckpt,
                )
                if run.arch_kwargs:
                    argv += ("--arch-kwargs", json.dumps(run.arch_kwargs, sort_keys=True))
                train.append(Command(f"train {run.name} seed {seed}", argv, ckpt, launch + ("--resume", ckpt)))
                lams = ("--lambdas", *[f"{x:g}" for x in run.eval_lambdas]) if run.eval_lambdas else ()
                base = ("python", "-m", "oat_edge", "eval", ckpt, "--data-dir", data, "--device", "cuda") + lams
                strong = f"seed{seed}/{run.name}.eval.json"
                pgd7 = f"seed{seed}/{run.name}.pgd7.json"
                # our robust metric (worst case over PGD-7, APGD-CE, APGD-DLR) and the paper's (PGD-7)
                evals.append(Command(f"eval {run.name} seed {seed}", base + ("--json", strong), strong))
                evals.append(Command(f"eval-pgd7 {run.name} seed {seed}",
                                     base + ("--attacks", "pgd7", "--no-masking-checks", "--json", pgd7), pgd7))
        return train + evals

    def check_data(self, data_dir) -> Path:
        """The data folder, or ConfigError naming the first missing dataset file (the layouts the
        readers of training/datasets/ accept: DIR/<file> or DIR/<dataset>/<file>)."""
        from oat_edge.training.datasets import get_spec

        spec = get_spec(self.dataset)
        root = spec.require_dir(data_dir)
        for rel in self.required_files:
            spec.find(root, rel)
        return root


def _published_svhn() -> Tuple[Published, ...]:
    return (
        Published("oat", "OAT WRN-16-8, the most robust end of the λ range", sa=94.43, ra=62.16),
        Published("oat", "OAT WRN-16-8, the most accurate end of the λ range", sa=97.07, ra=37.32),
    )


FULL_SCALE_SUITES = {
    "cifar10": FullScaleSuite(
        "cifar10", "cifar10", "resnet34", "ResNet-34", 4, _runs(S1, normal_bn=True),
        published=(
            Published("oat", "OAT ResNet-34 with dual BN, best SA over λ", sa=93.1),
            Published("oat-normal-bn-s4", "OAT ResNet-34 with normal BN trained without λ = 0 (S4, Appendix C), "
                      "best SA over λ", sa=91.5),
        ),
        notes="PGD-AT/PGD-ATS curves (Figs. 4, 6) are figures in the paper; their values are not transcribed here.",
        required_files=tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)) + ("cifar-10-batches-py/test_batch",),
    ),
    "svhn": FullScaleSuite(
        "svhn", "svhn", "wrn16_8", "WRN-16-8", 4, _runs(S1, normal_bn=False), published=_published_svhn(),
        notes="lr 0.01 is our pick from the paper's {0.1, 0.05, 0.01} (docs/fidelity.md).",
        required_files=("train_32x32.mat", "test_32x32.mat"),
    ),
    "stl10": FullScaleSuite(
        "stl10", "stl10", "wrn40_2", "WRN-40-2", 4, _runs(S1, normal_bn=False),
        notes="No STL-10 number is transcribed: the paper reports STL-10 in figures only. Batch 64 "
              "(96×96 images) is our choice (docs/fidelity.md).",
        required_files=tuple(f"stl10_binary/{s}_{k}.bin" for s in ("train", "test") for k in ("X", "y")),
    ),
}


def get_suite(suite) -> FullScaleSuite:
    if isinstance(suite, FullScaleSuite):
        return suite
    if suite not in FULL_SCALE_SUITES:
        raise ConfigError(f"unknown full-scale suite {suite!r}; choose one of {', '.join(FULL_SCALE_SUITES)}")
    return FULL_SCALE_SUITES[suite]


def _executable(argv: Tuple[str, ...]) -> List[str]:
    """Runnable argv: "python" is this interpreter; "torchrun" is the console script when it is on
    PATH, else ``python -m torch.distributed.run`` (the module the script wraps)."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "torchrun":
        found = shutil.which("torchrun")
        return [found, *argv[1:]] if found else [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    return list(argv)


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run_full_scale(suite, data_dir, out, seeds: int = 1, dry_run: bool = False, nproc: Optional[int] = None,
                   echo: Callable[[str], None] = print, runner: Callable[..., int] | None = None) -> List[Command]:
    """Run (or with ``dry_run`` print) a full-scale suite's commands in ``out/<suite>/``.

    Resumable: each command that exits 0 leaves ``.done/<name>``; those are skipped on the next
    call, and a training whose checkpoint exists but is not done continues with ``--resume``.
    A command that fails stops the suite with a ConfigError naming it. Returns the commands.
    Each command shows its own progress bar; between them one line gives the step, the elapsed
    time and an ETA from the mean time per finished step.
    """
    s = get_suite(suite)
    folder = Path(out).expanduser().resolve() / s.name
    # The commands run inside `folder`: the data folder must not depend on the caller's cwd.
    data = Path(data_dir).expanduser().resolve()
    commands = s.commands(data, seeds, nproc)
    if dry_run:
        echo(f"# {s.name}: {s.paper_model} on {s.dataset}, {len(commands)} commands; numbers to compare with:")
        for p in s.published:
            echo(f"#   {p.run}: {p.setting}: SA {p.sa if p.sa is not None else '—'}, "
                 f"RA (PGD-7) {p.ra if p.ra is not None else '—'}  [{p.source}]")
        echo(shlex.join(["mkdir", "-p", *[str(folder / f"seed{k}") for k in range(seeds)]]) + " && " + shlex.join(["cd", str(folder)]))
        for c in commands:
            echo(c.text())
        return commands
    s.check_data(data)
    run = runner or (lambda argv, cwd: subprocess.run(argv, cwd=cwd).returncode)
    done_dir = folder / ".done"
    done_dir.mkdir(parents=True, exist_ok=True)
    for seed in range(seeds):
        (folder / f"seed{seed}").mkdir(exist_ok=True)
    start, finished = time.monotonic(), 0
    for i, c in enumerate(commands, 1):
        marker = done_dir / c.name.replace(" ", "_")
        if marker.exists():
            echo(f"[{i}/{len(commands)}] {c.name}: done earlier, skipped")
            continue
        argv = c.resume_argv if (c.resume_argv and (folder / c.output).exists()) else c.argv
        elapsed = time.monotonic() - start
        left = len(commands) - i + 1
        eta = f", ETA {_fmt_s(elapsed / finished * left)}" if finished else ""
        echo(f"[{i}/{len(commands)}] {c.name} (elapsed {_fmt_s(elapsed)}{eta}): {shlex.join(argv)}")
        code = run(_executable(argv), str(folder))
        if code != 0:
            raise ConfigError(f"{s.name}: `{shlex.join(argv)}` failed with exit code {code} (in {folder}); "
                              "fix the cause and run again: finished steps are skipped")
        atomic_write_text(marker, shlex.join(argv) + "\n")
        finished += 1
    return commands


def recipes_markdown() -> str:
    """The suites' published numbers as a markdown table (docs/reproduction.md quotes it)."""
    lines = ["| suite | run | setting | SA (%) | RA PGD-7 (%) |", "|---|---|---|---|---|"]
    for s in FULL_SCALE_SUITES.values():
        for p in s.published:
            sa = "—" if p.sa is None else f"{p.sa:g}"
            ra = "—" if p.ra is None else f"{p.ra:g}"
            lines.append(f"| {s.name} | {p.run} | {p.setting} | {sa} | {ra} |")
    return "\n".join(lines)
