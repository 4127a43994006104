"""onnxruntime's spin-wait on and off, for a runtime that switches path (oat_edge.onnxrt.session_options).

Each session onnxruntime opens has its own pool of intra-op threads, and by default those threads
spin for a while after a call. A Runtime holds one session per path (and per baked mode), so when
it switches path the pool it just left can keep spinning on the cores the next path needs. This
measures ``Runtime.infer`` with ``backend_options={"spin_wait": ...}`` on and off:

- hold: one mode for the whole run;
- switch every 10 frames between two baked modes of the widest width (λ = 0 and λ = 1: two
  sessions), the first frame after a switch reported apart from the other nine;
- switch every frame.

Every (setting, repeat) runs in a fresh process, settings alternating, and the table gives the
median over repeats of each process's p50 / p99.

    python scripts/bench_spin_wait.py --bundle B [--bundle B2 ...] --threads 2 --batch 1 [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

_CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
from oat_edge.runtime import Runtime
cfg = json.loads(sys.argv[1])
rt = Runtime(cfg["bundle"], backend="onnxruntime", threads=cfg["threads"], backend_options={"spin_wait": cfg["spin"]})
w = max(rt.widths)
modes = [(0.0, w), (1.0, w)]
x = np.random.default_rng(0).random((cfg["batch"],) + tuple(rt.input_shape), dtype=np.float32)
for m in modes:
    rt.set_mode(*m)
    for _ in range(3):
        rt.infer(x)
clock = time.perf_counter_ns
def run(every, seconds):
    first, rest = [], []
    end = clock() + int(seconds * 1e9)
    i = 0
    while clock() < end or i < 20:
        if every and i % every == 0:
            rt.set_mode(*modes[(i // every) % 2])
        t0 = clock(); rt.infer(x); dt = clock() - t0
        (first if every and i % every == 0 else rest).append(dt)
        i += 1
    return first, rest
out = {}
hold_first, hold = run(0, cfg["seconds"])
out["hold"] = hold
f10, r10 = run(10, cfg["seconds"])
out["switch10_first"], out["switch10_rest"] = f10, r10
f1, _ = run(1, cfg["seconds"])
out["switch1"] = f1
rt.close()
print("SPIN " + json.dumps({k: [float(np.median(v)) / 1e6, float(np.percentile(v, 99)) / 1e6, len(v)]
                            for k, v in out.items()}))
"""

FIGURES = (("hold", "hold one mode"), ("switch10_rest", "switch every 10: frames 2–10"),
           ("switch10_first", "switch every 10: first frame after the switch"), ("switch1", "switch every frame"))


def child(bundle: str, threads: int, batch: int, spin: bool, seconds: float) -> dict:
    cfg = {"bundle": bundle, "threads": threads, "batch": batch, "spin": spin, "seconds": seconds}
    p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, timeout=900)
    for line in p.stdout.splitlines():
        if line.startswith("SPIN "):
            return json.loads(line[5:])
    raise RuntimeError((p.stderr or p.stdout).strip().splitlines()[-1:] or f"exit {p.returncode}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", action="append", required=True, help="bundle folder (repeatable)")
    ap.add_argument("--name", action="append", help="a name per bundle for the report")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="per figure and process")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    names = args.name or [Path(b).name for b in args.bundle]
    started = time.time()
    rows = []
    for bundle, name in zip(args.bundle, names):
        for batch in args.batch:
            runs = {True: [], False: []}
            for r in range(args.repeats):
                for spin in ((True, False) if r % 2 == 0 else (False, True)):
                    runs[spin].append(child(bundle, args.threads, batch, spin, args.seconds))
                    print(f"{name} b{batch} spin={'on' if spin else 'off'} repeat {r + 1}: "
                          + ", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f} ms" for k, v in runs[spin][-1].items()), flush=True)
            for key, label in FIGURES:
                row = {"model": name, "batch": batch, "figure": key, "label": label}
                for spin in (True, False):
                    tag = "on" if spin else "off"
                    row[f"{tag}_p50_ms"] = float(np.median([x[key][0] for x in runs[spin]]))
                    row[f"{tag}_p99_ms"] = float(np.median([x[key][1] for x in runs[spin]]))
                row["off_over_on_p50"] = row["off_p50_ms"] / row["on_p50_ms"]
                row["off_over_on_p99"] = row["off_p99_ms"] / row["on_p99_ms"]
                rows.append(row)
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(started)),
              "seconds": round(time.time() - started, 1), "command": "python " + " ".join(sys.argv),
              "threads": args.threads, "repeats": args.repeats, "note": args.note, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "spin_wait.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["# onnxruntime spin-wait on vs off, Runtime.infer while switching path", "",
          f"Created {result['created']} in {result['seconds']:.0f} s. Command: `{result['command']}`", ""]
    if args.note:
        md += [f"> {args.note}", ""]
    md += [f"{args.threads} intra-op threads; median over {args.repeats} fresh processes per setting (alternating) "
           "of each process's p50 / p99, in ms. Two modes of the widest width, λ = 0 and λ = 1 (two sessions).", "",
           "| model | batch | figure | spin on p50 / p99 | spin off p50 / p99 | off ÷ on p50 / p99 |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['batch']} | {r['label']} | {r['on_p50_ms']:.3g} / {r['on_p99_ms']:.3g} | "
                  f"{r['off_p50_ms']:.3g} / {r['off_p99_ms']:.3g} | {r['off_over_on_p50']:.2f} / {r['off_over_on_p99']:.2f} |")
    (args.out_dir / "spin_wait.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
