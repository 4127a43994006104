"""OATModel: what every backbone shares — the λ code, width switching, the mode, and the flat
FiLM vector layout that export and runtime use."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from oat_edge.errors import ConfigError, ModeError
from oat_edge.lambda_code import (
    DEFAULT_CODE_DIM, DEFAULT_ENCODING, S1, blend_weights, check_encoding, check_train_lambdas, encoding_code_dim,
    interp_weights, make_code_matrix,
)
from oat_edge.layers import Cond, FiLM, FiLMSpec
from oat_edge.layers.cond import host_to_device, make_route
from oat_edge.layers.film import FILM_SLOPE
from oat_edge.mode import check_lambda, width_index
from oat_edge.models.registry import REQUIRED

LamArg = Union[None, float, int, Sequence[float], np.ndarray, torch.Tensor]
# The widths every registered architecture trains by default (OATS in the paper).
DEFAULT_WIDTHS = (0.5, 0.75, 1.0)

# The keywords every backbone takes, with their defaults. A family lists these (and its own) in
# the order a checkpoint records them; REQUIRED ones are set by each variant.
INPUT_KEYWORDS = dict(num_classes=10, in_chans=3, mean=REQUIRED, std=REQUIRED)
CONDITIONING_KEYWORDS = dict(widths=DEFAULT_WIDTHS, train_lambdas=S1, code_dim=DEFAULT_CODE_DIM, code_seed=0,
                             film=True, dual_bn=True)
FILM_KEYWORDS = dict(film_slope=FILM_SLOPE, film_shared=True, film_init="default")
ENCODING_KEYWORDS = dict(lambda_encoding=DEFAULT_ENCODING)



class OATModel(nn.Module):
    """Base class. Subclasses pass the conditioning keywords (``CONDITIONING_KEYWORDS``,
    ``FILM_KEYWORDS``, ``ENCODING_KEYWORDS``) on, build their layers with ``self.film_spec``,
    then call ``self._finish_init()``, and implement ``features(x, cond)`` (normalised input
    -> logits).

    ``model(x, lam)``: x in [0, 1], NCHW; lam a float for the whole batch, a tensor/array of
    per-sample values (training mixes λ = 0 and λ > 0), or None for the mode set by
    ``set_mode``. The width is a model state (``set_width`` / ``set_mode``), as in slimmable
    networks, because all samples of a pass share it.
    """

    def __init__(
        self,
        widths: Sequence[float],
        train_lambdas: Sequence[float],
        code_dim: int = DEFAULT_CODE_DIM,
        code_seed: int = 0,
        film: bool = True,
        dual_bn: bool = True,
        film_slope: float = FILM_SLOPE,
        film_shared: bool = True,
        film_init: str = "default",
        lambda_encoding: str = DEFAULT_ENCODING,
    ):
        super().__init__()
        widths = sorted({float(w) for w in widths})
        if not widths or any(not 0.0 < w <= 1.0 for w in widths):
            raise ConfigError(f"widths must be in (0, 1], got {widths}")
        self.widths = tuple(widths)
        self.lambda_encoding = check_encoding(lambda_encoding)
        scalar = self.lambda_encoding == "scalar"
        # "scalar" feeds λ itself (a 1-d code) and ignores code_dim; subclasses size the FiLM
        # generators from self.code_dim.
        self.code_dim = encoding_code_dim(self.lambda_encoding, code_dim)
        self.train_lambdas = tuple(check_train_lambdas(train_lambdas, None if scalar else self.code_dim))
        self.code_seed = int(code_seed)
        self.use_film = bool(film)
        self.dual_bn = bool(dual_bn)
        # How subclasses build their FiLM sites (None: no FiLM).
        self.film_spec = FiLMSpec(self.code_dim, film_slope, film_shared, film_init) if film else None
        # The full orthogonal matrix is a buffer: it is saved in every checkpoint and the saved
        # one is what a loaded or resumed model uses (never regenerated). Under "scalar" its
        # rows are the training λ values themselves ([T, 1]), the codes those λ get.
        if scalar:
            matrix = torch.tensor(self.train_lambdas, dtype=torch.float32).reshape(-1, 1)
        else:
            matrix = torch.from_numpy(make_code_matrix(self.code_seed, self.code_dim))
        self.register_buffer("code_matrix", matrix)
        self._lam = 1.0 if self.train_lambdas[-1] > 0 else 0.0

    # --- set up by subclasses -------------------------------------------------------------
    def _finish_init(self):
        for k, site in enumerate(self.film_sites()):
            site.site_index = k
        for i in range(len(self.widths)):
            offset = 0
            for site in self.film_sites():
                site.flat_offsets[i] = offset
                offset += 2 * site.channels_at(i)
        self.set_width(self.widths[-1])

    def features(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # --- mode -------------------------------------------------------------------------------
    @property
    def width(self) -> float:
        return self.widths[self._width_idx]

    @property
    def lam(self) -> float:
        return self._lam

    def set_width(self, width: float) -> "OATModel":
        idx = width_index(width, self.widths)
        self._width_idx = idx
        for m in self.modules():
            if hasattr(m, "width_idx"):
                m.width_idx = idx
        return self

    def set_mode(self, lam: float, width: float) -> "OATModel":
        """Fix (λ, width) for calls that pass no λ (eval, export, attacks)."""
        lam = check_lambda(lam)
        self.set_width(width)
        self._lam = lam
        return self

    # --- λ codes ----------------------------------------------------------------------------
    def code_rows(self) -> torch.Tensor:
        """Codes of the training λ values, [T, d] (row i = i-th smallest training λ)."""
        return self.code_matrix[: len(self.train_lambdas)]

    def encode(self, lams) -> torch.Tensor:
        """Codes [N, d] for λ values (same formula as ``oat_edge.lambda_code.encode_lambdas``)."""
        rows = self.code_rows()
        if self.lambda_encoding == "scalar":
            values = np.atleast_1d(np.asarray(lams, dtype=np.float64)).reshape(-1)
            interp_weights(values, self.train_lambdas)  # validates λ ∈ [0, 1]
            return host_to_device(values.astype(np.float32), rows.device)[:, None]
        if self.lambda_encoding == "ro":
            lo, hi, _, t = blend_weights(lams, self.train_lambdas, None, "ro")
            lo_t = host_to_device(lo, rows.device)
            hi_t = host_to_device(hi, rows.device)
            t_t = host_to_device(t, rows.device, rows.dtype)[:, None]
            return rows[lo_t] * (1 - t_t) + rows[hi_t] * t_t  # (unchanged since the first checkpoints)
        # Slerp weights need the angle between the rows: a [T, d] copy to the CPU, tiny.
        lo, hi, w_lo, w_hi = blend_weights(lams, self.train_lambdas, rows.detach().cpu().numpy(), self.lambda_encoding)
        lo_t = host_to_device(lo, rows.device)
        hi_t = host_to_device(hi, rows.device)
        a = host_to_device(w_lo, rows.device, rows.dtype)[:, None]
        b = host_to_device(w_hi, rows.device, rows.dtype)[:, None]
        return rows[lo_t] * a + rows[hi_t] * b

    def _cond(self, lam: LamArg, batch: int, device) -> Cond:
        if lam is None:
            lam = self._lam
        if isinstance(lam, torch.Tensor):
            lam = lam.detach().cpu().numpy()
        if isinstance(lam, (float, int, np.floating, np.integer)):
            value = check_lambda(lam)
            return Cond(code=self.encode([value]).to(device), adv=value > 0.0)
        lams = np.asarray(lam, dtype=np.float64).reshape(-1)
        if lams.shape[0] != batch:
            raise ModeError(f"got {lams.shape[0]} λ values for a batch of {batch}")
        # The BN route is decided here, on the host, once per pass (see Route).
        is_adv = lams > 0.0
        if is_adv.all() or not is_adv.any():
            adv = bool(is_adv[0])
        else:
            adv = make_route(is_adv, device)
        # A training batch holds few distinct λ: encode (and run FiLM generators) once per value.
        unique, rows = np.unique(lams, return_inverse=True)
        return Cond(code=self.encode(unique).to(device), adv=adv, rows=host_to_device(rows.reshape(-1), device))

    def forward(self, x: torch.Tensor, lam: LamArg = None, film: Optional[torch.Tensor] = None) -> torch.Tensor:
        if film is not None:
            # Frozen path (export): FiLM γ/β come from a flat vector; λ only picks BN_c / BN_a.
            value = check_lambda(self._lam if lam is None else lam)
            return self.features(x, Cond(code=None, adv=value > 0.0, film=film))
        return self.features(x, self._cond(lam, x.shape[0], x.device))

    # --- FiLM layout (export and runtime) ---------------------------------------------------
    def film_sites(self) -> list[FiLM]:
        """FiLM sites in a fixed order (module registration order)."""
        return [m for m in self.modules() if isinstance(m, FiLM)]

    def film_layout(self, width: Optional[float] = None) -> list[tuple[int, int]]:
        """[(offset, channels)] per FiLM site in the flat vector of a width; each site holds
        γ then β, so the vector has 2·Σchannels entries."""
        i = self._width_idx if width is None else width_index(width, self.widths)
        return [(s.flat_offsets[i], s.channels_at(i)) for s in self.film_sites()]

    def film_size(self, width: Optional[float] = None) -> int:
        return sum(2 * c for _, c in self.film_layout(width))

    @torch.no_grad()
    def film_vectors(self, lams, width: Optional[float] = None) -> torch.Tensor:
        """Flat FiLM vectors [N, F] for λ values at a width, from the generators."""
        i = self._width_idx if width is None else width_index(width, self.widths)
        return self._film_from_codes(self.encode(lams), i)

    def _film_from_codes(self, code: torch.Tensor, width_idx: int) -> torch.Tensor:
        parts = []
        for site in self.film_sites():
            gamma, beta = site.params(code, width_idx)
            parts += [gamma, beta]
        if not parts:
            return code.new_zeros((code.shape[0], 0))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def frozen_cond(self, lam: LamArg, batch: int, device) -> Cond:
        """The conditioning of a pass at ``lam`` (one λ, or one per sample) with the FiLM γ/β
        already computed at the current width, per site and in the shape the site applies
        them: passes that reuse it skip the generators. The values are the generators' own, so
        the logits are the same; it is valid until the weights change."""
        cond = self._cond(lam, batch, device)
        sites = []
        for site in self.film_sites():
            c = site.channels
            out = site.generator().joint(cond.code, c)
            if cond.rows is not None:
                out = out[cond.rows]
            n = out.shape[0]
            sites.append((out[:, :c].reshape(n, c, 1, 1).contiguous(), out[:, c:].reshape(n, c, 1, 1).contiguous()))
        return Cond(code=None, adv=cond.adv, sites=tuple(sites))


class FiLMCached(nn.Module):
    """``model`` with the FiLM γ/β of each λ computed once and reused while λ and the width stay
    the same. For attacks: they make many passes at one λ (or one per-sample λ vector) with no
    weight update in between, and the generators gave the same γ/β at every pass. Make a new
    one after the weights change (a training step)."""

    @staticmethod
    def wrap(model):
        """``FiLMCached(model)``, or the model itself when it has no FiLM sites (nothing to cache)."""
        sites = getattr(model, "film_sites", None)
        return FiLMCached(model) if sites is not None and sites() else model

    def __init__(self, model: "OATModel"):
        super().__init__()
        self.model = model
        self._key = None
        self._cond: Optional[Cond] = None

    widths = property(lambda self: self.model.widths)
    width = property(lambda self: self.model.width)
    lam = property(lambda self: self.model.lam)

    def forward(self, x: torch.Tensor, lam: LamArg = None) -> torch.Tensor:
        m = self.model
        if lam is None:
            lam = m.lam
        if isinstance(lam, torch.Tensor):
            lam = lam.detach().cpu().numpy()
        if isinstance(lam, (float, int, np.floating, np.integer)):
            key = (float(lam), m._width_idx, str(x.device))
        else:
            key = (np.asarray(lam, dtype=np.float64).reshape(-1).tobytes(), m._width_idx, str(x.device))
        if key != self._key:
            self._cond, self._key = m.frozen_cond(lam, x.shape[0], x.device), key
        return m.features(x, self._cond)
