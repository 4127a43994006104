"""The bundle contract (docs/bundle.md) is enough to run a model: a program that knows only
onnxruntime, numpy and the documented format — it never imports oat_edge — loads a path from
the manifest, computes the FiLM vector of an off-grid λ from film.npz by the documented
recipe, and reproduces the PyTorch logits."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import torch

from export_helpers import digits_images, load_ckpt_model, tiny_bundle, tiny_checkpoint

# Written from docs/bundle.md only.
READER = textwrap.dedent(r'''
    import json, sys
    from pathlib import Path
    import numpy as np
    import onnxruntime as ort

    bundle, lam, width, images_file, out_file = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["schema"] == "oat-edge/bundle" and manifest["schema_version"] == 1

    # Modes -> files: a baked entry of exactly this mode, else the BN path of the width.
    baked = [b for b in manifest.get("baked", []) if abs(b["lam"] - lam) <= 1e-9 and abs(b["width"] - width) <= 1e-9
             and (b["lam"] == 0) == (lam == 0)]  # same BN branch as the plain rule
    entry = baked[0] if baked else next(p for p in manifest["paths"]
                                        if p["bn"] == ("c" if lam == 0 else "a") and abs(p["width"] - width) <= 1e-9)
    io = manifest["io"]
    images = np.load(images_file)
    feed = {io["images"]["name"]: images}
    if not baked:
        z = np.load(bundle / manifest["film"]["file"], allow_pickle=False)
        w = f"{width:g}"
        grid = z["lambda_grid"]
        hit = np.nonzero(np.abs(grid - lam) <= 1e-9)[0]
        if hit.size:
            film = z[f"table_w{w}"][hit[0]]
        else:
            t_l = z["train_lambdas"]
            rows = z["code_rows"].astype(np.float64)
            if lam <= t_l[0]:
                code = rows[0]
            elif lam >= t_l[-1]:
                code = rows[-1]
            else:
                hi = int(np.searchsorted(t_l, lam))
                lo = hi - 1
                t = (lam - t_l[lo]) / (t_l[hi] - t_l[lo])
                code = (1 - t) * rows[lo] + t * rows[hi]
            slope = manifest["film"]["negative_slope"]
            leaky = lambda v: np.where(v >= 0, v, slope * v)
            sites = z[f"sites_w{w}"]
            film = np.zeros(int(2 * sites[:, 1].sum()), dtype=np.float32)
            for k, (off, c) in enumerate(sites):
                h = leaky(z[f"fc1_weight_w{w}_s{k}"] @ code + z[f"fc1_bias_w{w}_s{k}"])
                film[off:off + 2 * c] = leaky(z[f"fc2_weight_w{w}_s{k}"] @ h + z[f"fc2_bias_w{w}_s{k}"])
        assert film.shape == (entry["film_size"],)
        feed[io["film"]["name"]] = film.astype(np.float32)
    sess = ort.InferenceSession(str(bundle / entry["file"]), providers=["CPUExecutionProvider"])
    logits = sess.run([io["logits"]["name"]], feed)[0]
    np.save(out_file, logits)
    assert "oat_edge" not in sys.modules and "torch" not in sys.modules, "the contract needs neither"
    print(json.dumps({"file": entry["file"], "modules_ok": True}))
''')


def run_reader(bundle, lam, width, images, tmp_path):
    np.save(tmp_path / "x.npy", images)
    r = subprocess.run([sys.executable, "-c", READER, str(bundle), repr(lam), repr(width), str(tmp_path / "x.npy"),
                        str(tmp_path / "y.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), np.load(tmp_path / "y.npy")


def test_plain_onnxruntime_and_numpy_reproduce_pytorch(tmp_path_factory, tmp_path):
    bundle = tiny_bundle(tmp_path_factory)
    model = load_ckpt_model(tiny_checkpoint(tmp_path_factory))
    x = digits_images(32)
    cases = [(0.37, 0.75, "paths/a_w0.75.onnx"),   # off the grid: generator route
             (0.0, 0.5, "baked/lam0_w0.5.onnx"),   # baked mode
             (0.85, 1.0, "paths/a_w1.onnx"),        # on the 0.05 grid, not a training λ
             (0.3, 1.0, "baked/lam0.3_w1.onnx")]
    for lam, width, expected_file in cases:
        info, logits = run_reader(bundle, lam, width, x, tmp_path)
        assert info["file"] == expected_file
        model.set_width(width)
        with torch.no_grad():
            ref = model(torch.from_numpy(x), lam).numpy()
        assert np.abs(logits - ref).max() <= 1e-4, (lam, width)
        assert (logits.argmax(1) == ref.argmax(1)).all()
