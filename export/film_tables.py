"""Building the FiLM tables of a bundle from a torch model (the format and its numpy readers:
``oat_edge.bundle.film``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from oat_edge.bundle.film import ENCODING_KEY, merge_grid
from oat_edge.errors import ConfigError
from oat_edge.lambda_code import DEFAULT_ENCODING
from oat_edge.mode import fmt_width


def build_film_tables(model, widths: Sequence[float], grid: Sequence[float]) -> dict[str, np.ndarray]:
    """Arrays for ``film.npz`` (key layout in docs/bundle.md)."""
    import torch

    grid = merge_grid(list(grid) + list(model.train_lambdas))
    tables: dict[str, np.ndarray] = {
        "lambda_grid": np.asarray(grid, dtype=np.float64),
        "train_lambdas": np.asarray(model.train_lambdas, dtype=np.float64),
        "code_rows": model.code_rows().detach().cpu().numpy().astype(np.float32),
        "widths": np.asarray([float(w) for w in widths], dtype=np.float64),
        "negative_slope": np.asarray(_slope(model), dtype=np.float64),
    }
    encoding = getattr(model, "lambda_encoding", DEFAULT_ENCODING)
    if encoding != DEFAULT_ENCODING:
        # Only when not "ro": bundles of "ro" models stay byte-identical to older exports, and
        # a film.npz without the key reads as "ro".
        tables[ENCODING_KEY] = np.asarray(encoding)
    sites = model.film_sites()
    with torch.no_grad():
        for w in widths:
            i = model.widths.index(float(w))
            key = fmt_width(w)
            tables[f"table_w{key}"] = model.film_vectors(grid, w).cpu().numpy().astype(np.float32)
            tables[f"sites_w{key}"] = np.asarray(model.film_layout(w), dtype=np.int64).reshape(-1, 2)
            for k, site in enumerate(sites):
                # The sub-generator this width uses (a slice of a shared generator, or its own).
                for part, t in zip(("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"), site.generator_weights(i)):
                    tables[f"{part}_w{key}_s{k}"] = t.detach().cpu().numpy().astype(np.float32)
    return tables


def _slope(model) -> float:
    slopes = {float(s.slope) for s in model.film_sites()}
    if len(slopes) != 1:
        raise ConfigError(f"FiLM generators use different LeakyReLU slopes {sorted(slopes)}; the bundle format has one")
    return slopes.pop()
