"""Suite-wide settings. Tests use tiny models where one intra-op thread is faster than two
(less synchronisation) and keeps parallel test processes from oversubscribing the 2 cores.
Benchmarks (oat-edge bench, scripts/) choose their own thread counts."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The paper-reproduction harness (reproduce/) lives in the checkout, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:  # torch is an optional extra; runtime-only environments run a subset of the tests
    import torch

    torch.set_num_threads(int(os.environ.get("OATEDGE_TEST_THREADS", "1")))
except ImportError:  # pragma: no cover
    pass
