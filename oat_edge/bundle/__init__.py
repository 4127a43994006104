"""The bundle format (docs/bundle.md), beside the checkpoint contract: what ``oat-edge export``
writes and every later stage reads. numpy only — never torch, onnx or TensorRT; cryptography
only when a signature is made or checked.

- ``names``: the schema id, file names and the ids of the files that run a mode;
- ``safe_files``: reading a bundle's files as if an attacker wrote them;
- ``schema``: validation of manifest.json (``parse_manifest``);
- ``typed``: the validated manifest as typed records (``Manifest``);
- ``signature``: Ed25519 keys, signing manifest bytes, checking manifest.sig;
- ``manifest``: ``load_manifest`` / ``read_manifest`` (schema, paths inside the bundle, sha256,
  signature), ``new_manifest`` / ``write_manifest`` / ``sign_bundle``, the batch profile;
- ``modes``: which file runs a mode (``ModeTable``, ``select_entry``);
- ``film``: the FiLM tables ``film.npz`` and ``film_vector`` for any λ;
- ``latency``: the per-device latency profiles ``latency/{device_key}.json``;
- ``engines``: TensorRT engine entries and when one may run on this machine.
"""

from oat_edge.bundle.film import film_vector, load_film_tables, save_film_tables, write_npz
from oat_edge.bundle.latency import make_profile, read_latency_profile, write_latency_profile
from oat_edge.bundle.manifest import (
    VERIFY_TOL, iter_entries, load_manifest, manifest_files, new_manifest, parse_batch_profile,
    read_manifest, sign_bundle, write_manifest,
)
from oat_edge.bundle.modes import ModeTable, select_entry
from oat_edge.bundle.names import (
    FILM_FILE, MANIFEST, PARITY_FILE, SCHEMA, SCHEMA_VERSION, SIGNATURE_FILE, baked_id, parity_key, path_id,
)
from oat_edge.bundle.typed import Manifest

__all__ = [
    "FILM_FILE", "MANIFEST", "PARITY_FILE", "SCHEMA", "SCHEMA_VERSION", "SIGNATURE_FILE", "VERIFY_TOL", "Manifest",
    "ModeTable", "baked_id", "film_vector", "iter_entries", "load_film_tables",
    "load_manifest", "make_profile", "manifest_files", "new_manifest", "parity_key", "parse_batch_profile",
    "path_id", "read_latency_profile", "read_manifest", "save_film_tables", "select_entry", "sign_bundle",
    "write_latency_profile", "write_manifest", "write_npz",
]
