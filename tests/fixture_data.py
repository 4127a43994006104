"""The expected outputs stored beside the committed fixtures (tests/fixtures/*_expected.npz):
arrays plus an ``info`` JSON record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"


def load_expected(name: str) -> dict:
    """``tests/fixtures/<name>_expected.npz`` as a dict of arrays, its ``info`` decoded."""
    with np.load(FIXTURES / f"{name}_expected.npz") as z:
        data = {k: z[k] for k in z.files}
    data["info"] = json.loads(bytes(data["info"]).decode())
    return data
