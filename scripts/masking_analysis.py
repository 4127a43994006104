"""Why does Square break images that every gradient attack misses? A per-image look at three modes.

    python scripts/masking_analysis.py CKPT OUT.json

At (λ, width) = (0, 1), (1, 1) and (0.6, 0.5) of a digits checkpoint, on the 360 test images at
ε = 0.25: the images PGD-7, APGD-CE and APGD-DLR leave standing; those Square (500 queries) then
breaks (S) and those it does not (R); where Square's points sit (share of pixels on a vertex of
the ε-box ∩ [0, 1]); the clean input-gradient L1 norm, the clean top-2 logit margin and the share
of background pixels of S against R; and how many of S stronger white-box attacks break (APGD
with 5 restarts, APGD-T over 9 targets, PGD-100 with the margin loss from random box vertices,
5 restarts). Results: benchmarks/results/robustness/masking_analysis.json (docs/robustness.md).
"""
import json, sys, time
import torch
from oat_edge.checkpoint import load_model
from oat_edge.training.datasets import load_dataset
from oat_edge.training.attacks import make_attack
from oat_edge.training.attacks.apgd import APGD
from oat_edge.training.attacks.base import project

torch.set_num_threads(1)
model, payload = load_model(sys.argv[1])
ds = load_dataset("digits", "test")
x, y = ds.images.float(), ds.labels
eps = 0.25
out = {}
for lam, w in [(0.0, 1.0), (1.0, 1.0), (0.6, 0.5)]:
    model.eval(); model.set_width(w)
    f = lambda z: model(z, lam)
    g = lambda k: torch.Generator().manual_seed(k)
    with torch.no_grad():
        clean = f(x).argmax(1) == y
    ok_grad = clean.clone()
    for k, n in enumerate(("pgd7", "apgd-ce", "apgd-dlr")):
        a = make_attack(n, dataset="digits")
        xa = a(model, x, y, lam, generator=g(k))
        with torch.no_grad():
            ok_grad &= f(xa).argmax(1) == y
    sq = make_attack("square", dataset="digits")
    idx = ok_grad.nonzero(as_tuple=True)[0]
    xs = sq(model, x[idx], y[idx], lam, generator=g(9))
    with torch.no_grad():
        br = f(xs).argmax(1) != y[idx]
    S = idx[br]; R = idx[~br]
    # where do Square's points sit: share of pixels at a vertex of the box (|δ| = ε or clipped at 0/1)
    d = (xs - x[idx]).abs()
    lo, hi = (x[idx] - eps).clamp(min=0), (x[idx] + eps).clamp(max=1)
    at_vertex = ((xs - lo).abs() < 1e-6) | ((xs - hi).abs() < 1e-6)
    # gradient norm at the clean point
    xg = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(f(xg), y, reduction="sum")
    (gr,) = torch.autograd.grad(loss, xg)
    gn = gr.flatten(1).abs().sum(1)
    with torch.no_grad():
        lg = f(x); top2 = lg.topk(2, 1).values; margin = (top2[:, 0] - top2[:, 1])
    res = {"n_clean": int(clean.sum()), "grad_robust": int(ok_grad.sum()), "square_extra": int(len(S)),
           "sq_points_vertex_share": float(at_vertex[br].float().mean()) if br.any() else None,
           "grad_l1_S": float(gn[S].median()) if len(S) else None, "grad_l1_R": float(gn[R].median()) if len(R) else None,
           "zero_grad_S": int((gn[S] == 0).sum()), "zero_grad_R": int((gn[R] == 0).sum()),
           "margin_S": float(margin[S].median()) if len(S) else None, "margin_R": float(margin[R].median()) if len(R) else None,
           "bg_pixels_S": float((x[S] == 0).float().mean()) if len(S) else None, "bg_pixels_R": float((x[R] == 0).float().mean()) if len(R) else None}
    # stronger white-box tries on S
    tries = {}
    for name, att in [("apgd-dlr x5 restarts", APGD("a", eps, loss="dlr", steps=100, restarts=5)),
                      ("apgd-ce x5 restarts", APGD("b", eps, loss="ce", steps=100, restarts=5)),
                      ("apgd-t 9 targets", APGD("c", eps, loss="dlr-t", steps=100, restarts=1, targets=9))]:
        if len(S) == 0: break
        xa = att(model, x[S], y[S], lam, generator=g(20))
        with torch.no_grad():
            tries[name] = int((f(xa).argmax(1) != y[S]).sum())
    # vertex-start PGD with the margin loss: random ±ε corner starts, 100 steps, 5 restarts
    if len(S):
        broken = torch.zeros(len(S), dtype=torch.bool)
        for r in range(5):
            lo_s, hi_s = (x[S] - eps).clamp(min=0), (x[S] + eps).clamp(max=1)
            sgn = (torch.randint(0, 2, x[S].shape, generator=g(100 + r)) * 2 - 1).float()
            z = project(x[S] + eps * sgn, lo_s, hi_s).requires_grad_(True)
            for it in range(100):
                lg = f(z); tr = lg.gather(1, y[S][:, None])[:, 0]
                oth = lg.masked_fill(torch.nn.functional.one_hot(y[S], 10).bool(), -1e9).amax(1)
                (gz,) = torch.autograd.grad((tr - oth).sum(), z)
                step = eps / 4 if it < 50 else eps / 16
                z = project(z.detach() - step * gz.sign(), lo_s, hi_s).requires_grad_(True)
                with torch.no_grad():
                    broken |= f(z).argmax(1) != y[S]
        tries["vertex-start margin PGD-100 x5"] = int(broken.sum())
    res["white_box_tries_on_S"] = tries
    out[f"lam{lam:g}_w{w:g}".replace(".", "p")] = res  # no dots: doc figure paths split on them
    print(lam, w, json.dumps(res), flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
