"""A team's own labelled images as a training dataset: ``folder:PATH`` and ``npz:PATH``.

``folder:PATH`` — the ImageFolder layout: ``PATH/<class name>/<image>``, one sub-folder per
    class (classes sorted by folder name → labels 0..K-1), images with the suffixes .png,
    .jpg, .jpeg (any case), decoded with Pillow and converted to RGB (3 channels; greyscale
    and palette images are expanded, an alpha channel is dropped). Hidden files are skipped;
    other files are ignored.
``npz:PATH`` — a numpy ``.npz`` (read with ``allow_pickle=False``) with arrays ``x`` and ``y``:
    ``x`` is [N, H, W, C] (NHWC) or [N, C, H, W] (NCHW) with C ∈ {1, 3}, or [N, H, W] (grey);
    the layout is NCHW when dim 1 is 1 or 3 and the last dim is not, otherwise NHWC. uint8
    means 0..255; float arrays must already be in [0, 1]. ``y`` holds N integer labels
    0..K-1. An optional string array ``class_names`` names the K classes.

Every image goes through ``oat_edge.preprocess.apply_preprocessing`` — the same numpy code the
runtime's ``infer_frames`` uses — so a bundle's preprocessing contract is exactly what training
saw. ``--image-size S`` resizes the shorter side to S and centre-crops S×S; without it all
images must share one size.

Split: seeded and stratified. Per class (in label order) the images of that class are permuted
with ``numpy.random.Generator(PCG64(split_seed))`` and ``round(val_fraction × n_class)`` of them
(at least 1 when the class has 2 or more images and val_fraction > 0) go to ``val``; the rest
are ``train``. The model's per-channel mean/std are computed on the train split (float64,
population std). There is no separate test split: evaluation uses ``val``.

Loading decodes files with ``workers`` threads; results are gathered in file order, so the
arrays (and every batch after them, see ``datasets.epoch_batches``) do not depend on it.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from oat_edge.errors import ConfigError
from oat_edge.preprocess import apply_preprocessing, make_contract
from oat_edge.training.datasets.spec import PAPER_ATTACK, DatasetSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_VAL_FRACTION = 0.2


@dataclass
class Options:
    image_size: Optional[int] = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    split_seed: int = 0
    workers: int = 1  # decoding threads; never changes the data

    @classmethod
    def from_any(cls, value) -> "Options":
        if isinstance(value, Options):
            return value
        d = dict(value or {})
        opts = cls(image_size=d.get("image_size"), val_fraction=float(d.get("val_fraction", DEFAULT_VAL_FRACTION)),
                   split_seed=int(d.get("split_seed", 0)), workers=int(d.get("workers") or 1))
        opts.check()
        return opts

    def check(self) -> None:
        if self.image_size is not None and not (isinstance(self.image_size, int) and 4 <= self.image_size <= 4096):
            raise ConfigError(f"--image-size must be an integer in 4..4096, got {self.image_size!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.split_seed < 0:
            raise ConfigError(f"--split-seed must be ≥ 0, got {self.split_seed}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be ≥ 1, got {self.workers}")

    def record(self) -> Dict[str, Any]:
        """What the checkpoint keeps (workers is left out: it does not change the data)."""
        return {"image_size": self.image_size, "val_fraction": self.val_fraction, "split_seed": self.split_seed}


@dataclass
class OwnData:
    name: str
    kind: str
    path: str
    images: np.ndarray  # float32 [N, C, H, W], model input before mean/std
    labels: np.ndarray  # int64 [N]
    class_names: List[str]
    files: List[str]  # per image: the file (folder) or "PATH[i]" (npz)
    train_idx: np.ndarray
    val_idx: np.ndarray
    mean: List[float]
    std: List[float]
    preprocessing: Dict[str, Any]
    options: Options
    source: Dict[str, Any] = field(default_factory=dict)

    def split(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        if split == "train":
            idx = self.train_idx
        elif split == "val":
            idx = self.val_idx
        else:
            raise ConfigError(f"dataset {self.name!r} has splits train, val; got {split!r}")
        if idx.size == 0:
            raise ConfigError(f"dataset {self.name!r}: the {split} split is empty (val fraction "
                              f"{self.options.val_fraction}); use --val-fraction > 0 or more images per class")
        return self.images[idx], self.labels[idx]

    def info(self) -> Dict[str, Any]:
        c, h, w = self.images.shape[1:]
        return {
            "num_classes": len(self.class_names), "input_shape": [int(c), int(h), int(w)],
            "mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names),
            "sizes": {"train": int(self.train_idx.size), "val": int(self.val_idx.size)},
            "options": self.options.record(), "preprocessing": self.preprocessing, "source": dict(self.source),
            "split": (f"seeded stratified split: per class a PCG64({self.options.split_seed}) permutation, "
                      f"round({self.options.val_fraction:g} × class size) to val"),
        }


_CACHE: Dict[tuple, OwnData] = {}

MIN_SIDE = 8  # smallest image side trained on (the digits' 8×8)


def load_own(name: str, options=None) -> OwnData:
    """Load (once per process and options) an own dataset; ConfigError naming the bad file."""
    kind, _, path = name.partition(":")
    opts = Options.from_any(options)
    root = Path(path).expanduser()
    key = (kind, str(root.resolve()) if root.exists() else str(root), opts.image_size, opts.val_fraction,
           opts.split_seed, _stamp(root))
    if key in _CACHE:
        return _CACHE[key]
    if kind == "folder":
        images, labels, classes, files, source = _read_folder(root, opts)
    else:
        images, labels, classes, files, source = _read_npz(root, opts)
    if min(images.shape[2:]) < MIN_SIDE:  # the networks downsample; BatchNorm needs > 1 value per channel
        raise ConfigError(f"dataset {name!r}: images of {images.shape[2]}×{images.shape[3]} pixels are too small to "
                          f"train on (at least {MIN_SIDE}×{MIN_SIDE}); pass --image-size to resize them")
    train_idx, val_idx = stratified_split(labels, opts.val_fraction, opts.split_seed)
    if train_idx.size == 0:
        raise ConfigError(f"dataset {name!r}: no training images left after the split")
    sub = images[train_idx].astype(np.float64)
    mean = sub.mean(axis=(0, 2, 3))
    std = sub.std(axis=(0, 2, 3))
    std = np.where(std > 1e-6, std, 1.0)  # a constant channel: leave its values unscaled
    c, h, w = images.shape[1:]
    pre = make_contract(channels=c, image_hw=(h, w), source_dtype=source["dtype"],
                        resize=opts.image_size, mean=mean, std=std, class_names=classes)
    data = OwnData(name=name, kind=kind, path=str(root), images=images, labels=labels, class_names=classes,
                   files=files, train_idx=train_idx, val_idx=val_idx, mean=[float(v) for v in mean],
                   std=[float(v) for v in std], preprocessing=pre, options=opts, source=source)
    _CACHE.clear()  # keep one dataset in memory
    _CACHE[key] = data
    return data


def _stamp(root: Path):
    """Changes when the data changes (so a rewritten folder is read again in the same process)."""
    try:
        if root.is_file():
            st = root.stat()
            return (st.st_size, st.st_mtime_ns)
        if root.is_dir():
            return tuple((p.name, p.stat().st_mtime_ns) for p in sorted(root.iterdir()))
    except OSError:
        pass
    return None


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), both sorted (see the module docstring)."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(np.floor(val_fraction * idx.size + 0.5))
        if val_fraction > 0 and idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        else:
            k = 0
        val.append(idx[rng.permutation(idx.size)[:k]])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(labels.size), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


# --- folder ----------------------------------------------------------------------------------


def _list_folder(root: Path) -> Tuple[List[str], List[Tuple[Path, int]]]:
    if not root.is_dir():
        raise ConfigError(f"folder dataset {root} is not a folder (expected {root}/<class>/<image>.png|jpg)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"folder dataset {root} has no class sub-folders (expected {root}/<class>/<image>.png|jpg)")
    items = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"class folder {root / cls} holds no images (.png, .jpg, .jpeg); "
                              "remove it or add images")
        items.extend((f, label) for f in files)
    return classes, items


def _decode(path: Path) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib (train extra)
        raise ConfigError("folder datasets need Pillow (pip install pillow)") from None
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16"):
                # 16-bit grey: convert("RGB") would clip every value above 255; scale 0..65535 to 0..255
                v = np.asarray(im).astype(np.uint32)
                grey = ((v * 255 + 32767) // 65535).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            if im.mode in ("I", "F"):
                raise ConfigError(f"{path}: {'32-bit integer' if im.mode == 'I' else 'floating-point'} images have "
                                  "no known value range; store 8-bit or 16-bit images")
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise ConfigError(f"{path}: not a readable image (Pillow cannot identify its format)") from None
    except Image.DecompressionBombError:
        raise ConfigError(f"{path}: more pixels than Pillow will decode (a decompression bomb guard); "
                          "resize the image first") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not a readable image ({detail})") from None
    return np.asarray(rgb, dtype=np.uint8)


def _read_folder(root: Path, opts: Options):
    classes, items = _list_folder(root)
    paths = [p for p, _ in items]
    with ThreadPoolExecutor(max_workers=opts.workers) as pool:
        # map keeps file order whatever the number of threads
        raw = list(pool.map(_decode, paths))
    _check_sizes(raw, [str(p) for p in paths], opts)
    images = _preprocess_all(raw, opts, (3, *_target_hw(raw, opts)))
    labels = np.array([lab for _, lab in items], dtype=np.int64)
    digest = hashlib.sha256("\n".join(str(p.relative_to(root)) for p in paths).encode()).hexdigest()
    source = {"kind": "folder", "dtype": "uint8", "files": len(paths), "file_list_sha256": digest,
              "decoder": "Pillow, converted to RGB"}
    return images, labels, classes, [str(p) for p in paths], source


def _check_sizes(raw: Sequence[np.ndarray], names: Sequence[str], opts: Options) -> None:
    if opts.image_size is not None or not raw:
        return
    first = raw[0].shape[:2]
    for img, name in zip(raw, names):
        if img.shape[:2] != first:
            raise ConfigError(f"{name}: {img.shape[0]}×{img.shape[1]} pixels, but {names[0]} is {first[0]}×{first[1]}; "
                              "images of mixed sizes need --image-size S (resize the shorter side to S, crop S×S)")


def _target_hw(raw: Sequence[np.ndarray], opts: Options) -> Tuple[int, int]:
    if opts.image_size is not None:
        return opts.image_size, opts.image_size
    return int(raw[0].shape[0]), int(raw[0].shape[1])


def _preprocess_all(raw: Sequence[np.ndarray], opts: Options, chw: Tuple[int, int, int]) -> np.ndarray:
    c, h, w = chw
    dtype = "uint8" if raw[0].dtype == np.uint8 else "float32"
    contract = make_contract(channels=c, image_hw=(h, w), source_dtype=dtype, resize=opts.image_size)
    out = np.empty((len(raw), c, h, w), dtype=np.float32)
    for i, img in enumerate(raw):
        out[i] = apply_preprocessing(img, contract, (h, w))
    return out


# --- npz -------------------------------------------------------------------------------------


def _read_npz(path: Path, opts: Options):
    x, y, names = _load_npz(path)
    x, layout = _to_nhwc(path, x)
    x = _check_npz_arrays(path, x, y)
    classes = _class_names(path, y, names)
    c = x.shape[3]
    if opts.image_size is None:
        h, w = x.shape[1:3]
    else:
        h = w = opts.image_size
    dtype = "uint8" if x.dtype == np.uint8 else "float32"
    contract = make_contract(channels=c, image_hw=(h, w), source_dtype=dtype, resize=opts.image_size)
    out = np.empty((x.shape[0], c, h, w), dtype=np.float32)
    for i in range(x.shape[0]):
        out[i] = apply_preprocessing(x[i], contract, (h, w))
    source = {"kind": "npz", "dtype": dtype, "layout": layout, "files": 1, "images": int(x.shape[0])}
    return out, y.astype(np.int64), classes, [f"{path}[{i}]" for i in range(x.shape[0])], source


def _load_npz(path: Path):
    """(x, y, class_names or None) of an npz of plain arrays."""
    from oat_edge.fileio import describe_load_error

    if not path.is_file():
        raise ConfigError(f"npz dataset {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"x", "y"} <= keys:
                raise ConfigError(f"{path}: an npz dataset needs arrays 'x' and 'y'; it has {sorted(keys)}")
            return z["x"], np.asarray(z["y"]), (z["class_names"] if "class_names" in keys else None)
    except ConfigError:
        raise
    except (ValueError, OSError, EOFError) as e:  # not a zip, truncated, or object arrays (pickles)
        raise ConfigError(f"{path}: not a readable npz of plain arrays ({describe_load_error(e)})") from None


def _to_nhwc(path: Path, x: np.ndarray):
    """x as [N, H, W, C] (grey [N, H, W] gains a channel), and the layout it was stored in."""
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.ndim != 4:
        raise ConfigError(f"{path}: x must be [N, H, W, C], [N, C, H, W] or [N, H, W]; got shape {list(x.shape)}")
    nchw = x.shape[1] in (1, 3) and x.shape[3] not in (1, 3)
    layout = "NCHW" if nchw else "NHWC"
    if nchw:
        x = x.transpose(0, 2, 3, 1)
    if x.shape[3] not in (1, 3):
        raise ConfigError(f"{path}: x must have 1 or 3 channels; got shape {list(x.shape)} read as {layout}")
    return x, layout


def _check_npz_arrays(path: Path, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x as uint8 or float32 in [0, 1], after checking x and y belong together."""
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ConfigError(f"{path}: x holds {x.shape[0]} images but y has shape {list(y.shape)}; "
                          "y must be one integer label per image")
    if x.shape[0] == 0:
        raise ConfigError(f"{path}: x holds no images")
    if not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{path}: y must hold integer labels, got dtype {y.dtype}")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"{path}: x must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise ConfigError(f"{path}: float x must lie in [0, 1] (got values in [{np.nanmin(x):.4g}, {np.nanmax(x):.4g}]"
                          "); store uint8 0..255 or divide by 255")
    return x


def _class_names(path: Path, y: np.ndarray, names) -> List[str]:
    """The K class names: the npz's class_names, or "0".."K-1"; labels must cover 0..K-1."""
    k = int(y.max()) + 1
    if y.min() < 0:
        raise ConfigError(f"{path}: labels must be 0..K-1, got a negative label {int(y.min())}")
    present = np.unique(y)
    if present.size != k:
        # the first gap in the sorted labels (no set of 0..K-1: one huge label must not cost K ints)
        missing = int(np.flatnonzero(present != np.arange(present.size))[0])
        raise ConfigError(f"{path}: class {missing} has no images (labels must cover 0..{k - 1})")
    if names is None:
        return [str(i) for i in range(k)]
    if names.ndim != 1 or names.shape[0] != k or names.dtype.kind not in "US":
        raise ConfigError(f"{path}: class_names must be {k} strings, got {names.dtype} {list(names.shape)}")
    return [str(v) for v in names.tolist()]


class OwnSpec(DatasetSpec):
    """``folder:PATH`` or ``npz:PATH``: the facts that need no data here, the rest read from it."""

    prefix = True
    facts = {
        "default_arch": "resnet_tiny", **PAPER_ATTACK, "splits": ("train", "val"),  # natural images: the paper's L∞
        "augment": "random crop with zero padding of 1/8 of the image side, no flip",
        "files": "folder:PATH (PATH/<class>/<image>.png|jpg) or npz:PATH (arrays x, y)",
    }
    # A team's own data (usually a few hundred to a few thousand images): the CIFAR-10 recipe's
    # optimiser with a smaller batch and fewer epochs as a starting point.
    recipe = {"epochs": 50, "batch_size": 32, "lr": 0.05}
    eval_split = "val"  # no separate test split

    def __init__(self, name: str):
        self.name = name

    def key(self, name: str) -> str:
        if not name.partition(":")[2]:
            raise ConfigError(f"dataset {name!r} names no path; use folder:PATH or npz:PATH")
        return name

    def info(self, name: str, options=None) -> Dict[str, Any]:
        info = self.static_info(name)
        info.update(load_own(name, options).info())
        return info

    def check_options(self, options: Dict[str, Any]) -> None:
        Options.from_any(options)  # bad --image-size etc. fail before any work

    def load(self, name: str, split: str, data_dir, options):
        return load_own(name, options).split(split)

    def augment(self, image_hw=None):
        """A random crop with zero padding of 1/8 of the image side and no flip (left/right can
        matter to a robot: arrows, signs)."""
        from oat_edge.training.augment import AugmentSpec

        side = min(image_hw) if image_hw is not None else 32
        return AugmentSpec(pad=max(1, int(side) // 8), flip=False)

    def preprocessing(self, name: str, options=None) -> Dict[str, Any]:
        return load_own(name, options).preprocessing


FOLDER = OwnSpec("folder")
NPZ = OwnSpec("npz")
