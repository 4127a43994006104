"""Atomic writes and hashing, shared by every stage (checkpoints, bundles, results).

A file is written to a temporary name in the destination folder, flushed and fsynced, then
renamed over the target: readers see the old file or the new one, never half of one, and an
interrupted write leaves the old file intact.

``check_output_file`` / ``check_output_dir`` check that ``--out``/``--json``/... can be
written before a long computation; ``describe_os_error`` and ``describe_load_error`` give one
line for a failed write or ``np.load``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional, Union

from oat_edge.errors import ConfigError

PathLike = Union[str, os.PathLike]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale(parent: PathLike, name: str) -> List[Path]:
    """Remove what killed runs left next to ``parent/name``: temporary files and folders
    ``.NAME.p<pid>-*.tmp`` of processes that no longer run (and ``.NAME.*.tmp`` in the older
    format without a pid, older than an hour). Returns what was removed."""
    parent = Path(parent)
    removed: List[Path] = []
    if not parent.is_dir():
        return removed
    prefix = f".{name}."
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        n = p.name
        if not (n.startswith(prefix) and n.endswith(".tmp")) or p.is_symlink():
            continue
        middle = n[len(prefix):-len(".tmp")]
        if middle.startswith("p") and "-" in middle and middle[1:middle.index("-")].isdigit():
            stale = not _pid_alive(int(middle[1:middle.index("-")]))
        else:
            try:
                stale = time.time() - p.stat().st_mtime > 3600
            except OSError:
                continue
        if stale:
            try:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.p{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.
    Temporary files of killed earlier writers of the same target are removed first."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent, target.name)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=suffix + ".tmp", dir=target.parent)
    except OSError as e:  # the caller's output location: say which, not the temporary name
        raise ConfigError(f"cannot write {target}: {e.strerror or e}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(target: PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: PathLike, obj) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it onto ``target`` on success.

    On any exception the temporary folder is removed and ``target`` is untouched. With
    ``overwrite`` an existing ``target`` is replaced without a moment where no folder is there:
    on Linux the two folders are swapped in one ``renameat2(RENAME_EXCHANGE)``; elsewhere the old
    folder is first renamed to ``.NAME.old-p<pid>.tmp`` and, should the process die before the new
    one is in place, the next run into the same parent puts it back (``recover_swap``). Stale
    temporary folders of killed runs are removed first."""
    target = Path(target)
    recover_swap(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite / --force to replace it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent))
    except OSError as e:
        raise ConfigError(f"cannot write {target}: {e.strerror or e}") from None
    try:
        yield tmp
        if target.exists() and exchange(tmp, target):
            pass  # tmp now holds the old folder; removed below
        else:
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old-p{os.getpid()}.tmp")
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_swap(target: PathLike) -> Optional[Path]:
    """Put back a folder that an interrupted non-atomic swap moved aside (``target`` missing,
    ``.NAME.old-p<pid>.tmp`` present from a process that no longer runs). Returns the restored
    path or None."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return None
    for p in sorted(target.parent.glob(f".{target.name}.old-p*.tmp")):
        pid = p.name[len(f".{target.name}.old-p"):-len(".tmp")]
        if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue
        os.replace(p, target)
        return target
    return None


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: PathLike, b: PathLike) -> bool:
    """Swap two existing paths atomically with Linux's renameat2(RENAME_EXCHANGE). False when
    the platform, the C library or the file system cannot (the caller falls back)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, "renameat2", None)
    except OSError:
        return False
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def plain(obj, nan_as_none: bool = False):
    """A JSON-safe copy of metadata: dict keys as strings, tuples as lists, numpy scalars as
    Python numbers, anything else that is not a plain value as its ``str``. ``nan_as_none``:
    NaN and ±inf become None (strict JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): plain(v, nan_as_none) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, nan_as_none) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return None if nan_as_none and isinstance(obj, float) and not math.isfinite(obj) else obj
    item = getattr(obj, "item", None)  # numpy scalars (no numpy import here)
    if callable(item) and getattr(obj, "ndim", None) == 0 and type(obj).__name__ != "ndarray":
        return plain(item(), nan_as_none)
    return str(obj)


# --- outputs -------------------------------------------------------------------------------------
def describe_load_error(e: BaseException) -> str:
    """numpy's reason an ``np.load(allow_pickle=False)`` failed, as one short phrase; never
    numpy's advice to load pickled data unsafely."""
    text = str(e)
    if "pickle" in text.lower():
        return "it holds pickled Python objects, which oat-edge never loads; save plain numeric arrays"
    return (text.splitlines()[0][:160] if text else type(e).__name__)


def describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return e.strerror or str(e)


def check_output_file(path: PathLike, what: str = "output") -> Path:
    """ConfigError now, before any work, when ``path`` cannot be written: it is a folder, its
    parent cannot be created or written, or the file exists and is read-only."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write {what} {path}: {describe_os_error(e)}") from None
    if not parent.is_dir():
        raise ConfigError(f"cannot write {what} {path}: {parent} is not a folder")
    _probe(parent, path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"cannot write {what} {path}: the file is read-only")
    return path


def check_output_dir(path: PathLike, what: str = "output folder") -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write {what} {path}: {describe_os_error(e)}") from None
    _probe(path, path, what)
    return path


def _probe(folder: Path, target: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".oat-edge-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ConfigError(f"cannot write {what} {target}: {describe_os_error(e)}") from None
