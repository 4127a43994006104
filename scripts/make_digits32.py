"""Write scikit-learn's digits as a CIFAR-shaped ``npz:`` dataset (3×32×32 uint8, NCHW): each 8×8
image upscaled 4× by pixel repetition and repeated over 3 channels. With it a ResNet-34 (the
paper's CIFAR architecture, 32×32 input) can be trained offline on this project's machines, which
have no CIFAR-10: the precision benchmark uses such a model for top-1 agreement on a *trained*
ResNet-34 (random weights give near-tie logits).

    python scripts/make_digits32.py out/digits32.npz
    oat-edge train --dataset npz:out/digits32.npz --arch resnet34 --widths 1.0 --epochs 10 \\
        --attack pgd1 --batch-size 32 --threads 2 --out out/r34_digits32.pt
    python scripts/bench_precision.py --models resnet34_trained --resnet34-ckpt out/r34_digits32.pt
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the .npz file to write")
    args = p.parse_args(argv)
    from sklearn.datasets import load_digits

    from oat_edge.fileio import atomic_write_bytes

    d = load_digits()
    x = np.rint(d.images / 16.0 * 255).astype(np.uint8)  # 0..16 -> 0..255
    x = np.kron(x, np.ones((4, 4), np.uint8))  # 8×8 -> 32×32, each pixel a 4×4 block
    x = np.repeat(x[:, None], 3, axis=1)  # [N, 3, 32, 32]
    buf = io.BytesIO()
    np.savez(buf, x=x, y=d.target.astype(np.int64))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}: {x.shape[0]} images {list(x.shape[1:])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
