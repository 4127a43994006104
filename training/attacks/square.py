"""Square attack, L∞ (Andriushchenko et al., ECCV 2020): a score-based black-box attack.

It never looks at a gradient, only at the logits, so it is the ensemble's guard against
gradient masking: a model that hides its gradients still loses to random search. Each query
proposes one random square window of the current perturbation re-drawn at ±ε (one sign per
channel, the same over the window) and keeps it if the margin logit_y − max_{j≠y} logit_j
falls. The window's area is a fraction p of the image, halved on the paper's schedule.
"""

from __future__ import annotations

import math

from oat_edge.training.attacks.base import Attack, _check_count, project

P_INIT = 0.8  # the paper's initial window fraction for L∞
# The paper's schedule for p, in units of a 10,000-query budget: p halves after each of these.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(query: int, n_queries: int, p_init: float = P_INIT) -> float:
    """p at query ``query`` (0-based) of ``n_queries``, the schedule rescaled to the budget."""
    at = int(query / n_queries * 10000)
    return p_init / 2 ** sum(at > h for h in P_HALVINGS)


def _margin(logits, y):
    import torch

    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
    return true - other


class Square(Attack):
    """``square``: the L∞ Square attack with ``queries`` model calls per image (early exit per
    image once misclassified)."""

    gradient_free = True  # the masking checks compare it with the gradient attacks
    # In an ensemble it runs only on the images every earlier attack left standing (AutoAttack's
    # order): its queries are the evaluation's largest cost and only those images can change the
    # worst case.
    survivors_only = True

    def __init__(self, name: str, eps: float, queries: int = 1000, p_init: float = P_INIT):
        self.name = name
        super().__init__(eps)
        self.queries = _check_count(name, "queries", queries)
        self.p_init = float(p_init)

    def describe(self) -> dict:
        return {"name": self.name, "eps": self.eps, "queries": self.queries, "p_init": self.p_init,
                "loss": "margin", "gradient_free": True, "scope": "images robust to the attacks before it"}

    def perturb(self, forward, x, y, lo, hi, generator):
        import torch

        n, c, h, w = x.shape
        dev = generator.device if generator is not None else x.device

        def rand_sign(*shape):
            return (torch.randint(0, 2, shape, generator=generator, device=dev) * 2 - 1).to(x.device, x.dtype)

        with torch.no_grad():
            # Start: vertical stripes of ±ε (one sign per channel and column).
            best = project(x + self.eps * rand_sign(n, c, 1, w), lo, hi)
            margin = _margin(forward(best), y)
            active = (margin > 0).nonzero(as_tuple=True)[0]
            rows = torch.arange(h, device=x.device)[None, :, None]
            cols = torch.arange(w, device=x.device)[None, None, :]
            for q in range(self.queries):
                if active.numel() == 0:
                    break
                m = active.numel()
                p = window_fraction(q, self.queries, self.p_init)
                s = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w) - 1 if min(h, w) > 1 else 1)
                top = torch.randint(0, h - s + 1, (m,), generator=generator, device=dev).to(x.device)
                left = torch.randint(0, w - s + 1, (m,), generator=generator, device=dev).to(x.device)
                window = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + s)
                          & (cols >= left[:, None, None]) & (cols < left[:, None, None] + s))[:, None]
                x0, cur, lo_a, hi_a = x[active], best[active], lo[active], hi[active]
                sign = rand_sign(m, c, 1, 1)
                cand = project(torch.where(window, x0 + self.eps * sign, cur), lo_a, hi_a)
                # A window already at that corner (or clipped to it by [0, 1]) wastes the query:
                # take the other sign there.
                same = ((cand - cur).abs() * window).flatten(1).amax(1) < 1e-7
                if bool(same.any()):
                    flipped = project(torch.where(window, x0 - self.eps * sign, cur), lo_a, hi_a)
                    cand[same] = flipped[same]
                new_margin = _margin(forward(cand, active), y[active])
                better = new_margin < margin[active]
                upd = active[better]
                best[upd] = cand[better]
                margin[upd] = new_margin[better]
                active = active[margin[active] > 0]
        return best
