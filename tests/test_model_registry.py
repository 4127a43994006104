"""The model registry against a fixture written before the entry points became
``model_args`` + family builder (tests/fixtures/make_model_fixture.py at commit fce0bd6): every
registered architecture records the same constructor keywords in the same order, builds the same
weights from the same seed and gives the same logits; a checkpoint written then still loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from oat_edge.errors import ConfigError
from oat_edge.fileio import plain
from oat_edge.models import create_model, get_model_defaults, list_models
from fixture_data import load_expected

FIXTURES = Path(__file__).parent / "fixtures"
# The fixture generator is the single source of the modes and inputs it recorded.
_spec = importlib.util.spec_from_file_location("make_model_fixture", FIXTURES / "make_model_fixture.py")
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)


@pytest.fixture(scope="module")
def expected():
    return load_expected("models")


def test_the_registry_holds_every_architecture_of_the_fixture(expected):
    assert sorted(expected["info"]["archs"]) == list_models()


@pytest.mark.parametrize("arch", list_models())
def test_defaults_are_the_recorded_keywords_in_the_recorded_order(expected, arch):
    assert [[k, v] for k, v in plain(get_model_defaults(arch)).items()] == expected["info"]["archs"][arch]["defaults"]


@pytest.mark.parametrize("arch", list_models())
def test_same_seed_builds_the_same_model_and_the_same_logits(expected, arch):
    torch.set_num_threads(1)
    info = expected["info"]["archs"][arch]
    torch.manual_seed(fixture.SEED)
    model = create_model(arch).eval()
    state = model.state_dict()
    assert [[k, list(v.shape)] for k, v in state.items()] == info["state"]
    assert sum(p.numel() for p in model.parameters()) == info["params"]
    assert len(model.film_sites()) == info["film_sites"]
    assert [model.film_size(w) for w in model.widths] == info["film_sizes"]
    sums = np.array([float(v.double().sum()) for v in state.values()])
    np.testing.assert_allclose(sums, expected[f"{arch}__sums"], rtol=1e-9, atol=1e-9)
    for key, value in fixture.logits(model).items():
        np.testing.assert_allclose(value, expected[f"{arch}__{key}"], rtol=1e-5, atol=1e-5)


def test_a_checkpoint_written_before_loads_with_the_same_outputs(expected):
    from oat_edge.checkpoint import load_model

    model, payload = load_model(FIXTURES / "tiny_checkpoint.pt")
    assert list(payload["arch_kwargs"]) == list(get_model_defaults("resnet_tiny"))
    for key, value in fixture.logits(model).items():
        np.testing.assert_allclose(value, expected[f"checkpoint__{key}"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_rejects_a_keyword_it_does_not_take(arch):
    with pytest.raises(ConfigError, match="does not take"):
        create_model(arch, blocks=(1, 1, 1))


@pytest.mark.parametrize("arch", list_models())
def test_defaults_and_built_model_agree(arch):
    """What a checkpoint records is what the model was built with."""
    defaults = get_model_defaults(arch)
    model = create_model(arch, **defaults)
    assert model.widths == tuple(defaults["widths"])
    assert model.train_lambdas == tuple(defaults["train_lambdas"])
    assert model.code_dim == defaults["code_dim"] and model.dual_bn == defaults["dual_bn"]
    assert model.classifier.out_features == defaults["num_classes"]
