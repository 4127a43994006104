"""Bundle signatures (Ed25519, from the ``cryptography`` package): keys, signing manifest
bytes, checking manifest.sig. Writing a bundle's signature is ``manifest.sign_bundle``.

The threat model (docs/bundle.md "Integrity and signatures"): the sha256 values in
manifest.json catch corruption (a truncated copy, a flipped bit), but anyone who can change a
file can also rewrite its hash. A signature catches tampering: ``manifest.sig`` holds an
Ed25519 signature over the exact bytes of manifest.json, and the manifest holds the sha256 of
every other file the runtime reads (paths, baked paths, their external data, film.npz,
parity.npz, engines); the signature also covers the sha256 of each latency profile present at
signing. A runtime given ``trusted_keys`` accepts a bundle only when manifest.sig verifies under
one of them, and then uses only the latency profiles it covers.

    oat-edge keygen --out robot-key          # robot-key (private, 0600) and robot-key.pub
    oat-edge sign BUNDLE --key robot-key     # writes BUNDLE/manifest.sig
    Runtime(BUNDLE, trusted_keys=["robot-key.pub"]); oat-edge verify BUNDLE --key robot-key.pub

Key files are PEM (PKCS#8 private keys, unencrypted; SubjectPublicKeyInfo public keys). A key
id is the first 16 hex digits of the sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import stat
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from oat_edge.bundle.names import LATENCY_DIR, SIGNATURE_FILE
from oat_edge.bundle.safe_files import read_manifest_bytes, read_once
from oat_edge.errors import BundleError, ConfigError, DependencyError
from oat_edge.fileio import atomic_write_bytes

FORMAT = "oat-edge/bundle-signature"
FORMAT_VERSION = 2  # 2: the signature covers the latency profiles and the signing time too (1: manifest.json only; still read)
ALGORITHM = "ed25519"
_DOMAIN = b"oat-edge bundle manifest signature v1\n"  # so a signature cannot be replayed elsewhere
_DOMAIN_V2 = b"oat-edge bundle signature v2\n"

KeyLike = Union[str, os.PathLike, bytes, Any]


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # the minimal runtime install leaves it out
        raise DependencyError("signed bundles and trusted keys need the `cryptography` package: "
                              "pip install cryptography") from None
    return ed25519, serialization, InvalidSignature


def _raw_public(public_key) -> bytes:
    _ed, serialization, _inv = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


# --- keys ----------------------------------------------------------------------------------------
def generate_key(out: Union[str, os.PathLike], force: bool = False) -> Dict[str, str]:
    """Write a new Ed25519 key pair: ``out`` (private, mode 0600) and ``out.pub``."""
    ed25519, serialization, _inv = _crypto()
    priv_path, pub_path = Path(out), Path(str(out) + ".pub")
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            raise ConfigError(f"{p} already exists; pass --force to overwrite it")
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(priv_path, priv)  # mkstemp: created 0600 and renamed as is
    os.chmod(priv_path, 0o600)
    atomic_write_bytes(pub_path, pub)
    os.chmod(pub_path, 0o644)
    return {"private": str(priv_path), "public": str(pub_path), "key_id": key_id(key.public_key())}


def _read_key_file(path: Path, what: str) -> bytes:
    """At most 64 KiB of a regular file: /dev/zero or a FIFO is not a key file (and is never
    read until memory runs out, nor waited on)."""
    limit = 64 << 10
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} {path} is not a key file (not a regular file)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is not a key file (too large)")
    if data.count(b"-----BEGIN ") > 1:
        raise ConfigError(f"{what} {path} holds more than one PEM block; give one key per file")
    return data


def load_private_key(path: Union[str, os.PathLike]):
    ed25519, serialization, _inv = _crypto()
    data = _read_key_file(Path(path), "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key (make one with `oat-edge keygen`)")
    return key


def load_public_key(key: KeyLike):
    """A public key from a PEM file path, PEM bytes, an Ed25519 public key object, or a private
    key file / object (its public half)."""
    ed25519, serialization, _inv = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, (bytes, bytearray)):
        data, where = bytes(key), "key bytes"
        if data.count(b"-----BEGIN ") > 1:
            raise ConfigError("key bytes hold more than one PEM block; give one key each")
    elif isinstance(key, (str, os.PathLike)):
        data, where = _read_key_file(Path(key), "public key"), str(key)
    else:
        raise ConfigError(f"a trusted key must be a PEM file, PEM bytes or an Ed25519 key, got {type(key).__name__}")
    try:
        if b"PRIVATE KEY" in data:
            loaded = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where} is not a PEM public key ({e})") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{where} is not an Ed25519 key (make one with `oat-edge keygen`)")
    return loaded


def load_trusted_keys(keys: Optional[Iterable[KeyLike]]) -> List[Any]:
    """None: no key trusted (unsigned bundles load, with a warning). Anything else must name at
    least one key: an empty list would otherwise silently accept unsigned bundles."""
    if keys is None:
        return []
    if isinstance(keys, (str, os.PathLike, bytes)):
        keys = [keys]
    try:
        keys = list(keys)
    except TypeError:
        raise ConfigError(f"trusted_keys must be a list of public keys (PEM files, PEM bytes or key objects), "
                          f"got {type(keys).__name__}") from None
    if not keys:
        raise ConfigError("trusted_keys is empty: give at least one public key, or None to accept unsigned bundles")
    return [load_public_key(k) for k in keys]


# --- signing and checking -------------------------------------------------------------------------
def _signed_bytes(manifest_bytes: bytes, latency: Optional[Dict[str, str]], signed_at: Optional[int] = None) -> bytes:
    """What the signature is over: v1 the manifest; v2 a header (the latency profiles' hashes and
    the signing time), then the manifest."""
    if latency is None:
        return _DOMAIN + manifest_bytes
    header = {"latency": latency, "signed_at": signed_at}
    return _DOMAIN_V2 + json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n" + manifest_bytes


def parse_time(value, what: str = "min_signed_at") -> int:
    """Seconds since the epoch (UTC) from a number or an ISO 8601 date/time ("2026-12-01",
    "2026-12-01T08:00:00+00:00"; a time without a zone is UTC); ConfigError otherwise."""
    import datetime as dt

    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a time, got {value!r}")
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return int(value)
    if isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(f"{what} must be seconds since 1970 or an ISO 8601 date/time, got {value!r}") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return int(t.timestamp())
    raise ConfigError(f"{what} must be seconds since 1970 or an ISO 8601 date/time, got {value!r}")


def latency_files(bundle: Union[str, os.PathLike]) -> Dict[str, bytes]:
    """{"latency/NAME.json": bytes} of the bundle's latency profiles (each read once, no symlinks)."""
    folder = Path(bundle) / LATENCY_DIR
    if folder.is_symlink():
        raise BundleError(f"{folder} is a symlink; a bundle must hold its files itself")
    names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
    return {f"{LATENCY_DIR}/{n}": read_once(folder / n, f"latency profile {folder / n}") for n in names}


def sign_manifest(manifest_bytes: bytes, private_key, latency: Optional[Dict[str, str]] = None,
                  signed_at: Optional[int] = None) -> Dict[str, Any]:
    """The content of manifest.sig for these manifest bytes and latency profile hashes, signed
    at ``signed_at`` (seconds since the epoch; default now). The signed time lets a runtime refuse
    an older, validly signed bundle (``min_signed_at``)."""
    latency = dict(latency or {})
    signed_at = int(time.time()) if signed_at is None else parse_time(signed_at, "signed_at")
    public = private_key.public_key()
    sig = private_key.sign(_signed_bytes(manifest_bytes, latency, signed_at))
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "algorithm": ALGORITHM,
        "key_id": key_id(public), "public_key": base64.b64encode(_raw_public(public)).decode("ascii"),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "latency": latency,
        "signed_at": signed_at, "signature": base64.b64encode(sig).decode("ascii"),
    }


def read_signature(bundle: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """manifest.sig as a dict, None when the bundle has none; BundleError when malformed."""
    path = Path(bundle) / SIGNATURE_FILE
    if path.is_symlink():
        raise BundleError(f"{bundle}: {SIGNATURE_FILE} is a symlink")
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
        if len(raw) > 64 << 10:
            raise ValueError("too large")
        sig = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path} is not a readable signature ({e})") from None
    if (not isinstance(sig, dict) or sig.get("format") != FORMAT or sig.get("format_version") not in (1, FORMAT_VERSION)
            or sig.get("algorithm") != ALGORITHM
            or not all(isinstance(sig.get(k), str) for k in ("public_key", "signature", "key_id"))
            or (sig["format_version"] == 2 and not (isinstance(sig.get("latency"), dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in sig["latency"].items())
                and isinstance(sig.get("signed_at"), int) and not isinstance(sig.get("signed_at"), bool)))):
        raise BundleError(f"{path} is not an oat-edge {ALGORITHM} bundle signature (format {FORMAT} v1 or v{FORMAT_VERSION})")
    return sig


def check_signature(bundle: Union[str, os.PathLike], manifest_bytes: bytes,
                    trusted_keys: Optional[Sequence[Any]] = None, min_signed_at=None) -> Optional[Dict[str, Any]]:
    """Check manifest.sig against ``manifest_bytes``. Returns {"key_id", "trusted", "latency",
    "signed_at"} of the signer, or None for an unsigned bundle when no key is trusted. BundleError
    when keys are trusted and the bundle is unsigned or signed by another key, whenever a
    signature is present but does not verify (the manifest changed after signing), and with
    ``min_signed_at`` (seconds or ISO 8601) when the bundle was signed before it or carries no
    signed time (rollback to an older, validly signed bundle)."""
    keys = load_trusted_keys(trusted_keys)
    floor = None if min_signed_at is None else parse_time(min_signed_at)
    if floor is not None and not keys:
        raise ConfigError("min_signed_at needs trusted_keys: an unchecked signature proves no signing time")
    sig = read_signature(bundle)
    if sig is None:
        if keys:
            raise BundleError(f"{bundle} is not signed, and this runtime trusts only signed bundles "
                              f"(keys {', '.join(key_id(k) for k in keys)}); sign it with `oat-edge sign {bundle} --key KEY`")
        return None  # nothing to check: an unsigned bundle needs no cryptography package
    ed25519, _ser, InvalidSignature = _crypto()
    try:
        raw_pub = base64.b64decode(sig["public_key"], validate=True)
        signature = base64.b64decode(sig["signature"], validate=True)
        embedded = ed25519.Ed25519PublicKey.from_public_bytes(raw_pub)
    except (ValueError, TypeError):
        raise BundleError(f"{bundle}/{SIGNATURE_FILE} holds a malformed key or signature") from None
    if keys:
        by_id = {_raw_public(k): k for k in keys}
        if raw_pub not in by_id:
            raise BundleError(f"{bundle} is signed by key {key_id(embedded)}, which is not trusted here "
                              f"(trusted: {', '.join(key_id(k) for k in keys)})")
        verifier = by_id[raw_pub]
    else:
        verifier = embedded
    latency = sig["latency"] if sig["format_version"] == 2 else None
    signed_at = sig.get("signed_at") if sig["format_version"] == 2 else None
    try:
        verifier.verify(signature, _signed_bytes(manifest_bytes, latency, signed_at))
    except InvalidSignature:
        raise BundleError(f"{bundle}: the signature in {SIGNATURE_FILE} does not match manifest.json: the manifest "
                          "was changed after signing (tampered with); do not use this bundle, or re-sign it if "
                          "you changed it yourself") from None
    if floor is not None and (signed_at is None or signed_at < floor):
        when = "carries no signed time (an old signature format)" if signed_at is None else \
            f"was signed at {_iso(signed_at)}"
        raise BundleError(f"{bundle} {when}, before the oldest this runtime accepts ({_iso(floor)}): "
                          "refusing a rollback to an older bundle; deploy the current one")
    return {"key_id": key_id(embedded), "trusted": bool(keys), "latency": dict(latency or {}), "signed_at": signed_at}


def _iso(seconds: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).isoformat()


def describe_signer(bundle: Union[str, os.PathLike], trusted_keys=None) -> str:
    """One line for `inspect`: who signed the bundle and whether the signature verifies."""
    try:
        info = check_signature(bundle, read_manifest_bytes(bundle), trusted_keys)
    except BundleError as e:
        return f"INVALID: {e}"
    if info is None:
        return "unsigned (hashes catch corruption, not tampering)"
    return f"Ed25519 key {info['key_id']} ({'trusted key' if info['trusted'] else 'signature valid; pass --key to trust it'})"


class UnsignedBundleWarning(UserWarning):
    """A bundle without manifest.sig was loaded with no trusted keys configured."""
