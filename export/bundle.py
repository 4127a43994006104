"""Compatibility name for code written against earlier versions: the bundle format is the core's
``oat_edge.bundle``; ``verify`` runs through the runtime's backends (``oat_edge.runtime.verify``)."""

from oat_edge.bundle.manifest import (  # noqa: F401
    FILM_FILE, MANIFEST, PARITY_FILE, REQUIRED, SCHEMA, SCHEMA_VERSION, VERIFY_TOL, baked_id, bundle_size,
    is_close_lambda, iter_entries, load_manifest, manifest_files, parity_key, path_id,
)
from oat_edge.bundle.modes import select_entry  # noqa: F401
