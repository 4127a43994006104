"""The precision of a bundle file: "fp32" (the exported graph), "fp16" (float16 compute,
float32 inputs/outputs) or "int8" (explicit QDQ quantization). A manifest entry without a
``precision`` field is fp32 (bundles written before precision existed)."""

from __future__ import annotations

from typing import Iterable, List, Mapping

from oat_edge.errors import ConfigError, ModeError

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT = "fp32"
# Rank of a precision: ties in the policy go to the lower rank (the more exact arithmetic).
RANK = {p: i for i, p in enumerate(PRECISIONS)}


def check_precision(value, error=ModeError) -> str:
    """``value`` as one of PRECISIONS, or ``error`` (ModeError for a mode, ConfigError for an option)."""
    text = str(value).strip().lower() if isinstance(value, str) else value
    if text not in PRECISIONS:
        raise error(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return text


def parse_precisions(values: Iterable) -> List[str]:
    """Export's --precision list: fp32 always first (the reference every other precision is
    derived from and checked against), the rest in PRECISIONS order, no repeats."""
    chosen = {check_precision(v, ConfigError) for v in (values or ())} | {DEFAULT}
    return [p for p in PRECISIONS if p in chosen]


def entry_precision(entry: Mapping) -> str:
    """The precision of a manifest entry, calibration record or latency record (absent: fp32)."""
    return entry.get("precision") or DEFAULT


def suffix(precision: str) -> str:
    """What a precision adds to an id or file name: nothing for fp32 (ids stay as they were)."""
    return "" if precision == DEFAULT else f"_{precision}"
