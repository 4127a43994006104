"""The checkpoint contract (docs/checkpoint.md): one ``torch.save`` file holding only plain tensors,
numbers, strings, lists and dicts, so it loads with ``torch.load(weights_only=True)`` — a
checkpoint from the internet cannot run code on load.

Top-level keys (``format`` and ``format_version`` identify the file):
    format            "oat-edge/checkpoint"
    format_version    1
    arch, arch_kwargs the registry name and the keyword arguments that rebuild the model
                      (widths, train_lambdas, code_dim, code_seed, film, dual_bn, ...)
    model             state dict (includes the λ-code matrix buffer ``code_matrix``)
    method            "oat" | "oats" | "pgd-at" | "pgd-ats"
    dataset           {"name", "num_classes", "input_shape": [C, H, W], "mean", "std", ...}
    config            the training configuration (plain values)
    epoch             completed epochs
    optimizer, scheduler, rng   resume state (may be absent in an export-only checkpoint)
    metrics           optional: last evaluation, history
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict

from oat_edge.errors import CheckpointError
from oat_edge.fileio import PathLike, atomic_path

FORMAT = "oat-edge/checkpoint"
FORMAT_VERSION = 1
METHODS = ("oat", "oats", "pgd-at", "pgd-ats")
REQUIRED_KEYS = ("format", "format_version", "arch", "arch_kwargs", "model", "method", "dataset", "epoch")


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temp file + fsync + rename)."""
    import torch

    payload = dict(payload)
    payload.setdefault("format", FORMAT)
    payload.setdefault("format_version", FORMAT_VERSION)
    _validate(payload, str(path))
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as e:
        from oat_edge.fileio import describe_os_error

        raise CheckpointError(f"could not write checkpoint {path}: {describe_os_error(e)}") from None
    except RuntimeError as e:  # torch's zip writer reports a failed write (e.g. a full disk) as RuntimeError
        text = str(e)
        if "write" not in text.lower() and "file" not in text.lower():
            raise
        raise CheckpointError(f"could not write checkpoint {path} (disk full or not writable?): "
                              f"{text.strip().splitlines()[0][:200]}") from None
    return Path(path)


def load_checkpoint(path: PathLike, map_location="cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint; one CheckpointError for anything that is not ours."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # torch's weights-only unpickler fails on garbage with assorted types (IndexError,
    # KeyError, ...) and a truncated zip can surface as OSError(EINVAL) from torch's zip reader:
    # any failure to read the file is reported as one CheckpointError.
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, i.e. running the file's code: never quote it.
        raise CheckpointError(
            f"{path} is not a readable oat-edge checkpoint: it holds objects other than plain tensors, numbers, "
            "strings, lists and dicts, and oat-edge refuses to load it (unpickling such a file could run code from it)"
        ) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, io.UnsupportedOperation,
            IndexError, KeyError, TypeError, AttributeError, OSError, MemoryError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in first or "WeightsUnpickler" in first:
            first = "it holds objects that are not plain tensors/numbers/strings"
        raise CheckpointError(
            f"{path} is not a readable oat-edge checkpoint (corrupt, truncated, or it holds "
            f"objects that are not plain tensors/numbers/strings): {first[:300]}"
        ) from None
    _validate(payload, str(path))
    return payload


def _validate(payload: Any, where: str) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is not an oat-edge checkpoint (no format={FORMAT!r} marker); "
            "train one with `oat-edge train`"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has checkpoint format version {payload.get('format_version')!r}; "
            f"this oat-edge reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{where} lacks required keys {missing}")
    if not isinstance(payload["method"], str) or payload["method"] not in METHODS:
        raise CheckpointError(f"{where} has unknown training method {payload['method']!r}; known: {METHODS}")
    # Types of the metadata every reader relies on: one clear error here, not a traceback later.
    expect = {"arch": (str, "a string"), "arch_kwargs": (dict, "a dict"), "dataset": (dict, "a dict"),
              "model": (dict, "a state dict")}
    for key, (kind, text) in expect.items():
        if not isinstance(payload[key], kind):
            raise CheckpointError(f"{where}: {key} must be {text}, got {type(payload[key]).__name__}")
    epoch = payload["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{where}: epoch must be a non-negative integer, got {epoch!r}")
    name = payload["dataset"].get("name")
    if name is not None and not isinstance(name, str):
        raise CheckpointError(f"{where}: dataset.name must be a string, got {type(name).__name__}")
    kw = payload["arch_kwargs"]
    for key in ("widths", "train_lambdas"):
        if key in kw and (not isinstance(kw[key], (list, tuple)) or not kw[key]
                          or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in kw[key])):
            raise CheckpointError(f"{where}: arch_kwargs.{key} must be a non-empty list of numbers, got {kw[key]!r:.80}")


# FiLM settings of checkpoints written before they were model arguments (oat-edge 0.1.0): one
# generator per width, LeakyReLU slope 0.1, identity initialisation.
LEGACY_FILM_KWARGS = {"film_shared": False, "film_slope": 0.1, "film_init": "identity"}


def build_model(payload: Dict[str, Any], strict: bool = True):
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    from oat_edge.errors import OatEdgeError
    from oat_edge.models import create_model

    if not isinstance(payload.get("arch_kwargs"), dict):
        raise CheckpointError(f"checkpoint arch_kwargs must be a dict, got {type(payload.get('arch_kwargs')).__name__}")
    kwargs = dict(payload["arch_kwargs"])
    if payload.get("oat_edge_version") == "0.1.0" and kwargs.get("film") and "film_shared" not in kwargs:
        kwargs.update(LEGACY_FILM_KWARGS)
    try:
        model = create_model(payload["arch"], **kwargs)
    except OatEdgeError as e:
        raise CheckpointError(f"checkpoint describes a model this oat-edge cannot build: {e}") from None
    try:
        model.load_state_dict(payload["model"], strict=strict)
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint weights do not fit architecture {payload['arch']!r}: {str(e)[:500]}") from None
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(f"checkpoint holds non-finite weights ({bad[0]} and {len(bad) - 1} more tensors have "
                              "NaN/inf): the run that wrote it diverged; retrain with a lower --lr")
    return model.eval()


def nonfinite_tensors(state: Dict[str, Any]) -> list:
    """Names of floating-point tensors in a state dict that hold NaN or inf."""
    import torch

    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_model(path: PathLike, map_location="cpu"):
    """(model, checkpoint payload) from a checkpoint file."""
    payload = load_checkpoint(path, map_location)
    return build_model(payload), payload
