"""The interface every export target implements.

A target writes one kind of artifact into the bundle being built. ``phase`` says when:

- ``"graphs"``: before the manifest — the target writes files and returns their manifest
  entries (the ONNX target: one file per path and baked path, each through the parity gate);
- ``"device"``: after the manifest — the target reads the finished bundle and records what it
  adds in the manifest itself (the TensorRT target: engines for this machine's GPU).

``check`` runs before any work (an unusable target fails the export at once, nothing written).
"""

from __future__ import annotations

from typing import Any, Dict, List


class ExportTarget:
    name = "base"
    phase = "graphs"  # or "device"

    def check(self, job) -> None:
        """Raise an OatEdgeError when this target cannot run with ``job``'s options."""

    def wanted(self, job) -> bool:
        """Whether this target runs for ``job`` (e.g. TensorRT only when asked or available)."""
        return True

    def write(self, job, bundle_dir) -> Dict[str, List[Dict[str, Any]]]:
        """Write into ``bundle_dir``; "graphs" targets return manifest entries by section
        (``{"paths": [...], "baked": [...]}``), "device" targets return {}."""
        raise NotImplementedError
