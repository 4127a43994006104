"""Reading files of a bundle as if an attacker had written them.

- ``inside(bundle, rel, what)``: a file the manifest names, refused when the name is not a plain
  relative path, when any part of it is a symlink, or when it resolves outside the bundle.
- ``read_manifest_bytes(bundle)``: manifest.json's bytes (size-capped, not a symlink).
- ``read_once(path)``: a file's bytes, opened once with O_NOFOLLOW (verify and use the same bytes).
- ``load_npz(path, what)``: every array of an ``.npz`` without ``np.load``: each member's
  ``.npy`` header is parsed with a size cap, object (pickled) dtypes are refused, and the data
  size the header announces must be what the member holds, so a forged header cannot make us
  allocate gigabytes. Any failure is one BundleError.
- ``onnx_external_data(path)``: the external-data files an ONNX model refers to (a minimal
  protobuf walk, no onnx package), so the manifest can be required to name and hash them.

Numpy and the standard library only: the runtime imports this.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Union

import numpy as np

from oat_edge.errors import BundleError

PathLike = Union[str, os.PathLike]

MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few hundred KiB at most
MAX_NPY_HEADER = 16 << 10  # numpy's own default cap is 10 000 bytes
MAX_NPZ_MEMBERS = 100_000
MAX_ONNX_DEPTH = 32  # graphs within attributes within graphs ...


# --- names inside the bundle -------------------------------------------------------------------
def check_bundle_dir(bundle: PathLike) -> Path:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist (export one with `oat-edge export CKPT -o {bundle}`)")
    return bundle


def inside(bundle: PathLike, rel: Any, what: str) -> Path:
    """The path of a file the manifest names, after checking that it stays in the bundle: a
    non-empty relative POSIX name without ``..``, no component a symlink, and the resolved
    path under the resolved bundle folder. BundleError otherwise (it does not check that the
    file exists)."""
    bundle = Path(bundle)
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise BundleError(f"manifest entry {what} has no valid file name")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or (p.parts and ":" in p.parts[0]):
        raise BundleError(f"manifest entry {what} names {rel!r}, which is outside the bundle")
    current = bundle
    for part in p.parts:
        current = current / part
        if current.is_symlink():
            raise BundleError(f"{bundle}: {what} file {rel} goes through the symlink {current.relative_to(bundle)}; "
                              "a bundle must hold its files itself (copy them in with `cp -L`)")
    root = bundle.resolve()
    try:
        current.resolve().relative_to(root)
    except ValueError:
        raise BundleError(f"{bundle}: {what} file {rel} resolves outside the bundle") from None
    return current


def read_manifest_bytes(bundle: PathLike, name: str = "manifest.json") -> bytes:
    bundle = check_bundle_dir(bundle)
    path = bundle / name
    if path.is_symlink():
        raise BundleError(f"{bundle}: {name} is a symlink; a bundle must hold its manifest itself")
    if not path.is_file():
        raise BundleError(f"{bundle} is not an oat-edge bundle: it has no {name}")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is {size} bytes; a bundle manifest is at most {MAX_MANIFEST_BYTES}")
        return path.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror or e}") from None


# --- .npz without np.load ------------------------------------------------------------------------
def read_once(path: PathLike, what: str = "") -> bytes:
    """The bytes of a regular file, opened once without following a symlink (O_NOFOLLOW): what
    is hashed is what is then used, whatever happens to the path meanwhile."""
    label = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BundleError(f"{label} is a symlink") from None
        raise BundleError(f"cannot read {label}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{label} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise BundleError(f"cannot read {label}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def load_npz(path: Union[PathLike, bytes], what: str = "") -> Dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (a path, or its bytes) as numpy arrays (copies); BundleError
    for anything else: not a zip, a member that is not ``.npy``, an oversized or malformed
    header, an object (pickle) dtype, or data of another size than the header announces."""
    data = path if isinstance(path, (bytes, bytearray, memoryview)) else None
    path = Path("<bytes>") if data is not None else Path(path)
    label = what or str(path)
    try:
        if data is None and path.is_symlink():
            raise BundleError(f"{label} is a symlink")
        file_size = len(data) if data is not None else path.stat().st_size
        out: Dict[str, np.ndarray] = {}
        with zipfile.ZipFile(io.BytesIO(data) if data is not None else path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_NPZ_MEMBERS:
                raise BundleError(f"{label} has {len(infos)} members")
            total = 0
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise BundleError(f"{label}: member {info.filename!r} is not an .npy array")
                key = info.filename[:-4]
                if key in out:
                    raise BundleError(f"{label}: array {key!r} appears twice")
                total += info.file_size
                # Stored members are as big as the file; compressed ones may be larger, within reason.
                if info.file_size > 64 * max(file_size, 1 << 20) or total > 64 * max(file_size, 1 << 20):
                    raise BundleError(f"{label}: member {info.filename!r} claims {info.file_size} bytes")
                with zf.open(info) as f:
                    out[key] = _read_npy(f, info.file_size, f"{label}: {key}")
        return out
    except BundleError:
        raise
    except MemoryError:
        raise BundleError(f"{label} is not a readable array file: it asks for more memory than there is") from None
    except Exception as e:  # zipfile, zlib, struct, numpy: report any of them as one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{label} is not a readable array file ({type(e).__name__}: {first[:200]})") from None


def _read_npy(f, member_size: int, label: str) -> np.ndarray:
    fmt = np.lib.format
    major, minor = fmt.read_magic(f)
    if (major, minor) == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
    elif (major, minor) in ((2, 0), (3, 0)):
        shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
    else:
        raise BundleError(f"{label}: unknown .npy version {major}.{minor}")
    if dtype.hasobject:
        raise BundleError(f"{label} holds Python objects (a pickle); bundles hold plain numeric arrays only")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BundleError(f"{label}: malformed shape {shape!r}")
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    header_end = f.tell()
    if nbytes != member_size - header_end:
        raise BundleError(f"{label}: header announces {nbytes} bytes of data, the file holds {member_size - header_end}")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise BundleError(f"{label} is truncated")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C").copy()


# --- ONNX external data ---------------------------------------------------------------------------
class _Malformed(Exception):
    pass


def _varint(buf, i: int, end: int):
    shift, value = 0, 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf, start: int, end: int):
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield field, wire, value
        elif wire == 1:
            i += 8
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise _Malformed("length past the end")
            yield field, wire, (i, i + n)
            i += n
        elif wire == 5:
            i += 4
        else:
            raise _Malformed(f"wire type {wire}")
    if i != end:
        raise _Malformed("field past the end")


# Field numbers of onnx.proto3 that can hold a TensorProto.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INIT = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL, _TENSOR_LOCATION = 13, 14


def _tensor(buf, s, e, out: List[str]) -> None:
    location = None
    external = False
    for field, wire, v in _fields(buf, s, e):
        if field == _TENSOR_LOCATION and wire == 0:
            external = v == 1
        elif field == _TENSOR_EXTERNAL and wire == 2:
            key = value = None
            for f2, w2, v2 in _fields(buf, *v):
                if w2 == 2 and f2 in (1, 2):
                    text = bytes(buf[v2[0]:v2[1]]).decode("utf-8", "replace")
                    if f2 == 1:
                        key = text
                    else:
                        value = text
            if key == "location":
                location = value
    if external or location is not None:
        out.append(location if location is not None else "")


def _sparse(buf, s, e, out):
    for field, wire, v in _fields(buf, s, e):
        if wire == 2 and field in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor(buf, *v, out)


def _graph(buf, s, e, out, depth):
    if depth > MAX_ONNX_DEPTH:
        raise _Malformed("graphs nested too deep")
    for field, wire, v in _fields(buf, s, e):
        if wire != 2:
            continue
        if field == _GRAPH_INITIALIZER:
            _tensor(buf, *v, out)
        elif field == _GRAPH_SPARSE_INIT:
            _sparse(buf, *v, out)
        elif field == _GRAPH_NODE:
            _node(buf, *v, out, depth)


def _node(buf, s, e, out, depth):
    for field, wire, v in _fields(buf, s, e):
        if field == _NODE_ATTRIBUTE and wire == 2:
            for f2, w2, v2 in _fields(buf, *v):
                if w2 != 2:
                    continue
                if f2 in (_ATTR_T, _ATTR_TENSORS):
                    _tensor(buf, *v2, out)
                elif f2 in (_ATTR_SPARSE, _ATTR_SPARSES):
                    _sparse(buf, *v2, out)
                elif f2 in (_ATTR_G, _ATTR_GRAPHS):
                    _graph(buf, *v2, out, depth + 1)


def onnx_external_data(path: Union[PathLike, bytes], what: str = "") -> List[str]:
    """The ``location`` of every tensor of an ONNX model (a path, or its bytes) stored as external
    data ("" for an external tensor without a location). BundleError when it is not a protobuf
    ModelProto."""
    import mmap

    if isinstance(path, (bytes, bytearray)):
        if not path:
            raise BundleError(f"{what} is empty, not an ONNX model")
        return _external_locations(memoryview(path), what)
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise BundleError(f"{what or path} is empty, not an ONNX model")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # large graphs: no copy in memory
    except OSError as e:
        raise BundleError(f"cannot read {what or path}: {e.strerror or e}") from None
    buf = memoryview(mapped)
    try:
        return _external_locations(buf, what or str(path))
    finally:
        buf.release()
        mapped.close()


def _external_locations(buf, what: str) -> List[str]:
    out: List[str] = []
    try:
        for field, wire, v in _fields(buf, 0, len(buf)):
            if wire != 2:
                continue
            if field == _MODEL_GRAPH:
                _graph(buf, *v, out, 0)
            elif field == _MODEL_FUNCTIONS:
                for f2, w2, v2 in _fields(buf, *v):
                    if f2 == _FUNCTION_NODE and w2 == 2:
                        _node(buf, *v2, out, 1)
    except (_Malformed, IndexError) as e:
        raise BundleError(f"{what} is not a valid ONNX model ({e})") from None
    return out


__all__ = ["check_bundle_dir", "inside", "load_npz", "onnx_external_data", "read_manifest_bytes", "read_once"]
