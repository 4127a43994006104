"""Full-scale recipes (reproduce/recipes.py): the printed commands are ones our CLI
accepts with the paper's/reference hyper-parameters, the data check names missing files, and a
run is resumable (a stand-in runner records what would be launched; nothing trains here)."""

from __future__ import annotations

import shlex
import sys

import pytest

from oat_edge.errors import ConfigError
from oat_edge.lambda_code import S1, S3_UNSEEN
from oat_edge.training.datasets import get_spec
from reproduce.recipes import FULL_SCALE_SUITES, recipes_markdown, run_full_scale


def _train_config(argv):
    """The resolved TrainConfig our `train` CLI builds from a recipe's argv."""
    from oat_edge.cli import build_parser
    from oat_edge.training.cli import config_from_args

    i = argv.index("train")
    args = build_parser().parse_args(list(argv[i:]))
    return config_from_args(args).resolved()


def test_suites_use_the_paper_networks_and_schedules():
    assert {k: (s.arch, s.dataset) for k, s in FULL_SCALE_SUITES.items()} == {
        "cifar10": ("resnet34", "cifar10"), "svhn": ("wrn16_8", "svhn"), "stl10": ("wrn40_2", "stl10")}
    for name, suite in FULL_SCALE_SUITES.items():
        cmds = suite.commands("/data", seeds=2)
        trains = [c for c in cmds if c.argv[0] == "torchrun"]
        assert trains and all(c.argv[1] == f"--nproc_per_node={suite.nproc}" for c in trains)
        # per seed: OAT, OATS, PGD-AT and PGD-ATS at each λ of S1, PGD-AT at each unseen λ (+ normal BN
        # on S1 and on S4 = S1 without λ = 0)
        assert len(trains) == 2 * (2 + 2 * len(S1) + len(S3_UNSEEN) + 2 * (name == "cifar10"))
        d = get_spec(name).recipe
        for c in trains:
            cfg = _train_config(c.argv)
            assert (cfg.epochs, cfg.batch_size, cfg.lr) == (d["epochs"], d["batch_size"], d["lr"])
            assert (cfg.weight_decay, cfg.momentum, cfg.attack, cfg.clean_pass) == (5e-4, 0.9, "pgd7", "all")
            assert cfg.arch == suite.arch and cfg.data_dir == "/data"
        oat = _train_config(next(c for c in trains if c.name == "train oat seed 1").argv)
        assert (oat.method, oat.lambdas, oat.widths, oat.seed) == ("oat", list(S1), [1.0], 1)
        oats = _train_config(next(c for c in trains if c.name == "train oats seed 0").argv)
        assert oats.widths == [0.5, 0.75, 1.0]
        ats = _train_config(next(c for c in trains if c.name == "train pgd-ats-0.3 seed 0").argv)
        assert (ats.method, ats.lambdas) == ("pgd-ats", [0.3])
        evals = [c for c in cmds if c.argv[:4] == ("python", "-m", "oat_edge", "eval")]
        assert len(evals) == 2 * len(trains)  # the strong worst case and the paper's PGD-7
        assert len({c.output for c in cmds}) == len(cmds)
    nbn = _train_config(next(c for c in FULL_SCALE_SUITES["cifar10"].commands("/d") if "normal-bn " in c.name).argv)
    assert nbn.arch_kwargs == {"dual_bn": False} and nbn.method == "oat" and 0.0 in nbn.lambdas
    # the paper's 91.5 % (normal BN) is a model trained without λ = 0 (S4, Appendix C): compared with that run
    s4 = _train_config(next(c for c in FULL_SCALE_SUITES["cifar10"].commands("/d") if "normal-bn-s4" in c.name).argv)
    assert s4.arch_kwargs == {"dual_bn": False} and s4.lambdas == [t for t in S1 if t > 0]
    assert [p.run for p in FULL_SCALE_SUITES["cifar10"].published if p.sa == 91.5] == ["oat-normal-bn-s4"]


def test_published_numbers_are_the_cited_ones():
    table = recipes_markdown()
    for n in ("94.43", "62.16", "97.07", "37.32", "93.1", "91.5"):
        assert n in table
    assert FULL_SCALE_SUITES["stl10"].published == ()  # nothing we can cite, nothing invented
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "reproduction.md").read_text()
    assert "## Full-scale recipes" in doc and table in doc  # the doc quotes the code's numbers


def test_dry_run_prints_every_command_without_data(tmp_path):
    lines = []
    cmds = run_full_scale("svhn", tmp_path / "no-such-dir", tmp_path / "out", seeds=1, dry_run=True, echo=lines.append)
    assert lines[-len(cmds):] == [c.text() for c in cmds]
    assert any("94.43" in l and "62.16" in l for l in lines)
    assert lines[len(lines) - len(cmds) - 1].startswith("mkdir -p ")
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    assert all(shlex.split(c.text()) == list(c.argv) for c in cmds)


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cifar-10-batches-py/data_batch_1"):
        run_full_scale("cifar10", tmp_path, tmp_path / "out")
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "train_32x32.mat").write_bytes(b"x")
    with pytest.raises(ConfigError, match="test_32x32.mat"):
        run_full_scale("svhn", tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="not a folder"):
        run_full_scale("stl10", tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown full-scale suite"):
        run_full_scale("imagenet", tmp_path, tmp_path / "out", dry_run=True)
    with pytest.raises(ConfigError, match="seeds"):
        run_full_scale("svhn", tmp_path, tmp_path / "out", seeds=0, dry_run=True)


def test_run_is_resumable(tmp_path):
    """A failing step stops the suite; the next call skips finished steps and resumes a
    training whose checkpoint exists."""
    data = tmp_path / "data"
    (data / "stl10_binary").mkdir(parents=True)
    for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"):
        (data / "stl10_binary" / f).write_bytes(b"")
    launched = []

    def runner(argv, cwd, fail_at=3):
        launched.append((argv, cwd))
        if len(launched) == fail_at:
            (tmp_path / "out" / "stl10" / "seed0" / "pgd-at-0.pt").write_bytes(b"partial")
            return 1
        return 0

    with pytest.raises(ConfigError, match="failed with exit code 1"):
        run_full_scale("stl10", data, tmp_path / "out", runner=runner, echo=lambda s: None)
    assert len(launched) == 3 and launched[0][1] == str(tmp_path / "out" / "stl10")
    first = launched[0][0]
    assert first[0].endswith("torchrun") or first[1:3] == ["-m", "torch.distributed.run"]
    launched.clear()
    cmds = run_full_scale("stl10", data, tmp_path / "out", runner=lambda a, c: runner(a, c, fail_at=0), echo=lambda s: None)
    assert len(launched) == len(cmds) - 2  # the two finished trainings are skipped
    assert "--resume" in launched[0][0] and "seed0/pgd-at-0.pt" in launched[0][0]
    assert launched[-1][0][0] == sys.executable  # evaluations run with this interpreter
    launched.clear()
    run_full_scale("stl10", data, tmp_path / "out", runner=runner, echo=lambda s: None)
    assert launched == []  # everything done
