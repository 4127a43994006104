"""The bundle contract (docs/bundle.md), beside the checkpoint contract: what ``oat-edge
export`` writes and every later stage reads. numpy only — never torch, onnx or TensorRT.

- ``manifest``: names and ids, ``load_manifest`` (schema, paths inside the bundle, sha256),
  ``new_manifest`` / ``write_manifest`` (the writer), the batch profile;
- ``modes``: which file runs a mode (``ModeTable``, ``select_entry``);
- ``film``: the FiLM tables ``film.npz`` and ``film_vector`` for any λ;
- ``latency``: the per-device latency profiles ``latency/{device_key}.json``;
- ``engines``: TensorRT engine entries and when one may run on this machine.
"""

from oat_edge.bundle.film import check_film_tables, film_vector, load_film_tables, save_film_tables, write_npz
from oat_edge.bundle.latency import make_profile, read_latency_profile, write_latency_profile
from oat_edge.bundle.manifest import (
    FILM_FILE, MANIFEST, PARITY_FILE, SCHEMA, SCHEMA_VERSION, VERIFY_TOL, baked_id, bundle_size, iter_entries,
    load_manifest, manifest_files, new_manifest, parity_key, parse_batch_profile, path_id, write_manifest,
)
from oat_edge.bundle.modes import ModeTable, select_entry

__all__ = [
    "FILM_FILE", "MANIFEST", "PARITY_FILE", "SCHEMA", "SCHEMA_VERSION", "VERIFY_TOL", "ModeTable", "baked_id",
    "bundle_size", "check_film_tables", "film_vector", "iter_entries", "load_film_tables", "load_manifest",
    "make_profile", "manifest_files", "new_manifest", "parity_key", "parse_batch_profile", "path_id",
    "read_latency_profile", "save_film_tables", "select_entry", "write_latency_profile", "write_manifest", "write_npz",
]
