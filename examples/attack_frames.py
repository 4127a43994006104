"""Precompute the adversarial inputs of robot_loop.py's attack episodes (torch needed here only).

For each frame of the loop's scenario that falls in an attack episode, and for each mode the
loop can be in during one — the modes its controller picks at the episodes' threat levels, plus
the fixed clean mode (λ = 0, widest width) the summary compares against — run the strong attack
against the checkpoint's PyTorch model in that mode (the function the exported bundle computes,
parity ≤ 1e-4) and store the adversarial model inputs. The attack works on the model-size
input after preprocessing (float [0, 1], ε in those units). Labels: the source's (digits, a
labelled image folder), otherwise the clean prediction of the widest λ = 0 mode.

    python examples/attack_frames.py --checkpoint ckpt.pt --bundle bundle/ --out attack.npz
    python examples/robot_loop.py --bundle bundle/ --attack-frames attack.npz

"Strong attack": by default the evaluation ensemble (PGD-7, APGD-CE, APGD-DLR) with the
per-image worst case — the first adversarial input that fools the model is kept.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robot_loop as RL  # noqa: E402  (the same sources, scenario and controller as the loop)


def episode_modes(rt, fps: float, frames: int, seed: int, budget_ms: float):
    """Modes the loop's controller picks at the episodes' threat levels, and the clean mode."""
    from oat_edge import Mode

    control = RL.Controller(rt, budget_ms, lambda: 0.0, seed=seed)
    modes = []
    widest = max(rt.widths)
    lam0 = 0.0 if any(p.bn == "c" and abs(p.width - widest) < 1e-9 for p in rt.paths) else min(rt.train_lambdas)
    modes.append(Mode(lam0, widest))
    for i in range(frames):
        threat = RL.threat_signal(i / (fps or 30.0), seed)
        m = control.choose(threat)
        if m not in modes:
            modes.append(m)
    return modes


def worst_case_attack(model, x, y, lam, attacks, seed):
    """Per image, the first attack's input that fools the model (else the last attack's)."""
    import torch

    out = x.clone()
    alive = torch.ones(x.shape[0], dtype=torch.bool)
    for a in attacks:
        if not alive.any():
            break
        idx = alive.nonzero().flatten()
        adv = a(model, x[idx], y[idx], lam, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            fooled = model(adv, lam).argmax(1) != y[idx]
        out[idx] = adv
        alive[idx[fooled]] = False
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the checkpoint the bundle was exported from")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--out", required=True, help="the .npz for robot_loop.py --attack-frames")
    parser.add_argument("--source", default=None, help="as robot_loop.py (default: digits for 8×8 grey bundles)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--budget-ms", type=float, default=None, help="as robot_loop.py (default: half the frame period)")
    parser.add_argument("--attacks", nargs="+", default=None, help="attack names (default: the eval ensemble, pgd7 apgd-ce apgd-dlr square)")
    parser.add_argument("--eps", type=float, default=None, help="L∞ radius in [0, 1] units (default: the dataset's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from oat_edge.checkpoint import load_model
    from oat_edge.fileio import atomic_path
    from oat_edge.runtime import Runtime
    from oat_edge.training.attacks import DEFAULT_ENSEMBLE
    from oat_edge.training.evaluate import resolve_attacks, trained_eps

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unsigned bundle is fine for this offline step
        rt = Runtime(args.bundle, backend="onnxruntime", threads=args.threads)
    model, payload = load_model(args.checkpoint)
    source = args.source or RL.default_source(rt)
    try:
        frames, labels, color = RL.load_stream(source, rt, args.frames, args.seed)
    except RL.SourceError as e:
        print(f"attack_frames: error: {e}", file=sys.stderr)
        return 2
    frames = list(frames)
    idx = RL.episode_frames(len(frames), args.fps, args.seed)
    x = torch.from_numpy(rt.preprocess([frames[i] for i in idx], color))
    period_ms = 1e3 / args.fps if args.fps > 0 else 10.0
    modes = episode_modes(rt, args.fps, len(frames), args.seed, args.budget_ms or period_ms / 2)
    y_true = None if labels is None else torch.from_numpy(np.asarray(labels)[idx])
    label_source = f"{source} labels" if labels is not None else "the attacked mode's own clean prediction"
    ds_name = (payload.get("dataset") or {}).get("name")
    eps = args.eps if args.eps is not None else trained_eps(payload)  # the model's own threat model
    attacks = resolve_attacks(list(args.attacks or DEFAULT_ENSEMBLE), ds_name, eps=eps)
    out = {"indices": idx, "modes": np.array([[m.lam, m.width] for m in modes]),
           "source": np.array(source), "n_frames": np.array(len(frames)),
           "attack": np.array("worst case of " + ", ".join(a.name for a in attacks)),
           "eps": np.array(attacks[0].eps), "label_source": np.array(label_source)}
    for k, m in enumerate(modes):
        model.set_width(m.width)
        if y_true is None:  # unlabelled source: does the attack change what this mode sees?
            with torch.no_grad():
                y = model(x, m.lam).argmax(1)
        else:
            y = y_true
        out[f"labels_{k}"] = y.numpy().astype(np.int64)
        adv = worst_case_attack(model, x, y, m.lam, attacks, args.seed)
        with torch.no_grad():
            acc = float((model(adv, m.lam).argmax(1) == y).float().mean())
        out[f"adv_{k}"] = adv.numpy().astype(np.float32)
        print(f"mode λ={m.lam:g} width={m.width:g}: {len(idx)} episode frames attacked, accuracy under attack {acc:.1%}")
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    print(f"wrote {args.out} ({len(modes)} modes × {len(idx)} frames, {time.perf_counter() - t0:.1f} s)")
    return 0


def _main() -> int:
    from oat_edge.errors import OatEdgeError

    try:
        return main()
    except (RL.SourceError, OatEdgeError) as e:  # one line, no traceback
        print(f"attack_frames: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main())
