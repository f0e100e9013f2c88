"""Rank selection shared by all decomposition passes.

Exactly one selector decides the rank:

* ``rank``    — by its *type*: an integer (``rank=4``) is that absolute rank; a float in
  (0, 1] (``rank=0.25``, ``rank=1.0``) a fraction of the full rank, ``ceil(rank · max_rank)``;
  a float above 1 is an error (see :func:`check_rank_value`).
* ``energy``  — smallest r with Σ_{i<r} s_i² / Σ_i s_i² ≥ energy, energy in (0, 1].
* ``vbmf_matrix`` — the EVBMF rank of that matrix (Nakajima et al. 2013; Kim et al. 2016).
* ``speedup`` — the largest r with ``original_macs / macs_for_rank(r) >= speedup``.

The result is then rounded **up** to a multiple of ``round_to`` (16 suits AVX-512 and AVX2
kernels, 8 GPU tensor cores) and clamped to [1, max_rank]; rounding follows the ``speedup``
search, so the MAC reduction after rounding is smaller than requested. Tucker-2 has two
ranks: ``select_rank_pair`` applies the selectors per unfolding, and for ``speedup`` keeps
them proportional to their modes. :func:`select_by` dispatches a pass's selector option.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EVBMFResult",
    "check_rank_value",
    "evbmf",
    "evbmf_result",
    "format_rank",
    "round_rank",
    "select_by",
    "select_rank",
    "select_rank_pair",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- EVBMF


@dataclass(frozen=True)
class EVBMFResult:
    rank: int
    sigma2: float  # estimated noise variance
    threshold: float  # singular values above this are kept
    singular_values: np.ndarray  # all singular values of the (L ≤ M oriented) matrix


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _evb_objective(sigma2: float, L: int, M: int, s: np.ndarray, xubar: float) -> float:
    # Negative free energy as a function of σ² (Nakajima et al. 2013, eq. for σ² estimation,
    # H = L so the residual term vanishes): Σ_h ψ0(x_h) + [x_h > x̄] ψ1(x_h), x_h = γ_h²/(Mσ²).
    alpha = L / M
    x = np.maximum(s * s / (M * sigma2), 1e-300)
    big = x > xubar
    obj = float(np.sum(x - np.log(x)))
    if np.any(big):
        z = x[big]
        t = _tau(z, alpha)
        obj += float(np.sum(np.log(t + 1.0) + alpha * np.log(t / alpha + 1.0) - t))
    return obj


def _minimize_bounded(f: Callable[[float], float], lo: float, hi: float, xatol: float = 1e-5) -> float:
    """Brent's bounded scalar minimisation (Forsythe, Malcolm & Moler's fminbound), the
    algorithm of ``scipy.optimize.minimize_scalar(method="bounded")`` with its default
    ``xatol``, which the reference EVBMF port uses. Kept local on purpose: the free energy
    can have a lower minimum right at the lower bound for a nearly exactly low-rank
    matrix (a pruned layer), where a global search declares every non-zero component
    "signal"; the reference's local search gives the rank Kim et al. used."""
    sqrt_eps = math.sqrt(2.2e-16)
    golden_mean = 0.5 * (3.0 - math.sqrt(5.0))
    a, b = lo, hi
    fulc = a + golden_mean * (b - a)
    nfc = xf = fulc
    rat = e = 0.0
    fx = f(xf)
    ffulc = fnfc = fx
    xm = 0.5 * (a + b)
    tol1 = sqrt_eps * abs(xf) + xatol / 3.0
    tol2 = 2.0 * tol1
    for _ in range(500):
        if abs(xf - xm) <= tol2 - 0.5 * (b - a):
            break
        golden = True
        if abs(e) > tol1:  # try a parabolic step
            golden = False
            r = (xf - nfc) * (fx - ffulc)
            q = (xf - fulc) * (fx - fnfc)
            p = (xf - fulc) * q - (xf - nfc) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            r, e = e, rat
            if abs(p) < abs(0.5 * q * r) and q * (a - xf) < p < q * (b - xf):
                rat = p / q
                x = xf + rat
                if (x - a) < tol2 or (b - x) < tol2:
                    rat = tol1 * (1.0 if xm >= xf else -1.0)
            else:
                golden = True
        if golden:
            e = (a - xf) if xf >= xm else (b - xf)
            rat = golden_mean * e
        x = xf + (1.0 if rat >= 0 else -1.0) * max(abs(rat), tol1)
        fu = f(x)
        if fu <= fx:
            if x >= xf:
                a = xf
            else:
                b = xf
            fulc, ffulc = nfc, fnfc
            nfc, fnfc = xf, fx
            xf, fx = x, fu
        else:
            if x < xf:
                a = x
            else:
                b = x
            if fu <= fnfc or nfc == xf:
                fulc, ffulc = nfc, fnfc
                nfc, fnfc = x, fu
            elif fu <= ffulc or fulc == xf or fulc == nfc:
                fulc, ffulc = x, fu
        xm = 0.5 * (a + b)
        tol1 = sqrt_eps * abs(xf) + xatol / 3.0
        tol2 = 2.0 * tol1
    return xf


def evbmf_result(matrix: np.ndarray, sigma2: float | None = None) -> EVBMFResult:
    """Analytical empirical VBMF (Nakajima, Sugiyama, Babacan, Tomioka 2013).

    Follows the widely used numpy port (CasvandenBogaard/VBMF, used by Kim et al.'s
    pytorch-tensor-decompositions) with H = L: the noise variance σ² is estimated by
    minimising the free energy over the paper's [lower, upper] bounds with the same
    bounded Brent search (no scipy needed), and the rank is the number of singular values
    above √(M σ² (1 + τ̄)(1 + α/τ̄)), τ̄ = 2.5129·√α. The matrix is transposed if needed
    so that L ≤ M. Checked against the reference port (with scipy) on the 2×(19+55+6)
    unfoldings of ResNet-20/56 and the VGG-style net and on random noisy low-rank
    matrices: identical ranks.
    """
    Y = np.asarray(matrix, dtype=np.float64)
    if Y.ndim != 2 or Y.size == 0:
        raise ValueError(f"evbmf needs a non-empty 2-D matrix, got shape {Y.shape}")
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    s = np.linalg.svd(Y, compute_uv=False)
    if not np.any(s > 0):
        return EVBMFResult(0, 0.0, 0.0, s)
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    xubar = (1.0 + tauubar) * (1.0 + alpha / tauubar)
    if sigma2 is None:
        eh_ub = min(math.ceil(L / (1.0 + alpha)) - 1, L) - 1
        upper = float(np.sum(s**2)) / (L * M)
        lower = max(s[eh_ub + 1] ** 2 / (M * xubar), float(np.mean(s[eh_ub + 1 :] ** 2)) / M)
        lower = max(lower, upper * 1e-12)  # an exactly low-rank matrix gives lower = 0
        if lower >= upper:
            sigma2 = upper
        else:
            sigma2 = _minimize_bounded(lambda v: _evb_objective(v, L, M, s, xubar), lower, upper)
    threshold = math.sqrt(M * sigma2 * xubar)
    rank = int(np.sum(s > threshold))
    return EVBMFResult(rank, float(sigma2), threshold, s)


def evbmf(matrix: np.ndarray, sigma2: float | None = None) -> int:
    """Rank estimated by EVBMF (may be 0 for pure noise; ``select_rank`` clamps to ≥ 1)."""
    return evbmf_result(matrix, sigma2).rank


# ---------------------------------------------------------------------------- selection


def round_rank(r: int, max_rank: int, round_to: int = 1) -> int:
    """Round ``r`` up to a multiple of ``round_to`` and clamp to [1, max_rank]."""
    if isinstance(round_to, bool) or int(round_to) != round_to or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    round_to = int(round_to)
    r = max(1, int(r))  # e.g. EVBMF finds no signal: still one component, then rounded
    r = -(-r // round_to) * round_to
    return max(1, min(int(max_rank), r))


def _check_max_rank(max_rank: int) -> int:
    if isinstance(max_rank, bool) or int(max_rank) != max_rank or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    return int(max_rank)


def _one_selector(**selectors) -> str:
    given = [k for k, v in selectors.items() if v is not None]
    if len(given) != 1:
        names = ", ".join(selectors)
        if not given:
            raise ValueError(f"give exactly one rank selector ({names}); none was given")
        raise ValueError(f"give exactly one rank selector ({names}); got {', '.join(given)}")
    return given[0]


def format_rank(rank: int | float) -> str:
    """``rank`` as it must be written to mean the same: ``4`` (absolute), ``1.0``, ``0.25`` (fractions)."""
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        return str(int(rank))
    return repr(float(rank))


def check_rank_value(rank: object) -> int | float:
    """Check a ``rank`` value; returns it as ``int`` (absolute) or ``float`` (fraction).

    The type is the meaning: an integer (``4``; numpy integers too) is an absolute rank,
    at least 1; a float is a fraction of the full rank in (0, 1] — ``1.0`` the full rank.
    Option text keeps that distinction (``rank=4`` is an int, ``rank=1.0`` a float; see
    :func:`onnxopt.registry.number_as_written`), and so do YAML, TOML and JSON configs.

    Raises:
        ValueError: not a number, an integer below 1, or a float outside (0, 1], e.g.
            "rank=2.5: write a whole number for an absolute rank or a fraction in (0, 1]".
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, float, np.integer, np.floating)):
        raise ValueError(f"rank must be a number, got {rank!r}")
    if isinstance(rank, (int, np.integer)):
        if rank < 1:
            raise ValueError(
                f"rank={int(rank)}: an absolute rank is a whole number >= 1; a fraction of the full "
                "rank is written with a decimal point in (0, 1], e.g. rank=0.5"
            )
        return int(rank)
    value = float(rank)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"rank={value!r}: write a whole number for an absolute rank or a fraction in (0, 1]")
    return value


def _rank_from_value(rank: int | float, max_rank: int) -> int:
    value = check_rank_value(rank)
    if isinstance(value, int):
        return value
    return max(1, math.ceil(value * max_rank - 1e-9))


def _rank_from_energy(singular_values, energy: float) -> int:
    if isinstance(energy, bool) or not isinstance(energy, (int, float, np.integer, np.floating)):
        raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
    if not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if singular_values is None:
        raise ValueError("energy= needs the singular values")
    s = np.asarray(singular_values, dtype=np.float64).ravel()
    if s.size == 0 or np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError("singular values must be a non-empty array of finite non-negative numbers")
    e = np.sort(s)[::-1] ** 2
    total = float(e.sum())
    if total == 0.0:
        return 1
    cum = np.cumsum(e) / total
    # tolerance: energy=1.0 must not fail on the last ulp of a cumulative sum
    return int(np.searchsorted(cum, float(energy) - 1e-12) + 1)


def _check_speedup(speedup, macs_fn, original_macs, fn_name: str) -> float:
    if isinstance(speedup, bool) or not isinstance(speedup, (int, float, np.integer, np.floating)):
        raise ValueError(f"speedup must be a number > 0, got {speedup!r}")
    if not math.isfinite(float(speedup)) or speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    if macs_fn is None or original_macs is None:
        raise ValueError(f"speedup= needs {fn_name} and original_macs")
    if not original_macs > 0:
        raise ValueError(f"original_macs must be > 0, got {original_macs}")
    return float(speedup)


def select_rank(
    singular_values: Sequence[float] | np.ndarray | None,
    max_rank: int,
    *,
    rank: int | float | None = None,
    energy: float | None = None,
    vbmf_matrix: np.ndarray | None = None,
    speedup: float | None = None,
    macs_for_rank: Callable[[int], float] | None = None,
    original_macs: float | None = None,
    round_to: int = 1,
) -> int:
    """Choose one rank in [1, max_rank]; see the module docstring for the selectors.

    ``singular_values`` is only needed for ``energy`` (pass None otherwise).
    ``macs_for_rank`` must be non-decreasing in r (every function in ``costs`` is). If even
    r = 1 does not reach ``speedup`` the result is 1 and a warning is logged. Before
    rounding, the chosen r is the largest meeting the target, so the achieved reduction
    is within one rank step of ``speedup`` (< 5 % on layers with ≥ ~20 rank steps).
    """
    max_rank = _check_max_rank(max_rank)
    which = _one_selector(rank=rank, energy=energy, vbmf_matrix=vbmf_matrix, speedup=speedup)
    if which == "rank":
        r = _rank_from_value(rank, max_rank)
    elif which == "energy":
        r = _rank_from_energy(singular_values, energy)
    elif which == "vbmf_matrix":
        r = evbmf(vbmf_matrix)
    else:
        target = _check_speedup(speedup, macs_for_rank, original_macs, "macs_for_rank")

        def ok(k: int) -> bool:
            return original_macs / macs_for_rank(k) >= target

        if not ok(1):
            log.warning("speedup %.3g is out of reach even at rank 1; using rank 1", target)
            r = 1
        else:
            lo, hi = 1, max_rank  # invariant: ok(lo)
            if ok(hi):
                lo = hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if ok(mid):
                    lo = mid
                else:
                    hi = mid
            r = lo
    return round_rank(r, max_rank, round_to)


def select_rank_pair(
    singular_values: tuple[np.ndarray, np.ndarray] | None,
    max_ranks: tuple[int, int],
    *,
    rank: int | float | tuple[int | float, int | float] | None = None,
    energy: float | tuple[float, float] | None = None,
    vbmf_matrices: tuple[np.ndarray, np.ndarray] | None = None,
    speedup: float | None = None,
    macs_for_ranks: Callable[[int, int], float] | None = None,
    original_macs: float | None = None,
    round_to: int = 1,
) -> tuple[int, int]:
    """Two ranks ``(r_out, r_in)`` for Tucker-2 (``tucker2(W, r_out, r_in)``).

    ``singular_values = (s_out, s_in)`` from ``tucker2_unfolding_singular_values`` and
    ``max_ranks = (F, C)``. ``rank`` / ``energy`` may be one value for both unfoldings or a
    pair; ``vbmf_matrices = tucker2_unfoldings(W)`` (Kim et al. 2016). For ``speedup`` the
    ranks stay proportional to the modes (r_in/C = r_out/F = t, each rounded to the nearest
    integer ≥ 1) and the largest t with ``original_macs / macs_for_ranks(r_out, r_in) >=
    speedup`` is taken; ``macs_for_ranks`` must be non-decreasing in both ranks.
    """
    max_out, max_in = (_check_max_rank(m) for m in max_ranks)
    which = _one_selector(rank=rank, energy=energy, vbmf_matrices=vbmf_matrices, speedup=speedup)

    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    if which == "rank":
        ro, ri = pair(rank)
        r = (_rank_from_value(ro, max_out), _rank_from_value(ri, max_in))
    elif which == "energy":
        if singular_values is None:
            raise ValueError("energy= needs the singular values of both unfoldings")
        eo, ei = pair(energy)
        r = (_rank_from_energy(singular_values[0], eo), _rank_from_energy(singular_values[1], ei))
    elif which == "vbmf_matrices":
        r = (evbmf(vbmf_matrices[0]), evbmf(vbmf_matrices[1]))
    else:
        target = _check_speedup(speedup, macs_for_ranks, original_macs, "macs_for_ranks")

        def ranks_at(t: float) -> tuple[int, int]:
            return max(1, min(max_out, round(t * max_out))), max(1, min(max_in, round(t * max_in)))

        def ok(t: float) -> bool:
            return original_macs / macs_for_ranks(*ranks_at(t)) >= target

        if not ok(0.0):
            log.warning("speedup %.3g is out of reach even at ranks (1, 1); using them", target)
            r = (1, 1)
        elif ok(1.0):
            r = ranks_at(1.0)
        else:
            lo, hi = 0.0, 1.0  # ok(lo), not ok(hi); ranks_at is a step function of t
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if ok(mid):
                    lo = mid
                else:
                    hi = mid
            r = ranks_at(lo)
    return round_rank(r[0], max_out, round_to), round_rank(r[1], max_in, round_to)


def select_by(
    selector: tuple[str, object],
    max_rank: int | tuple[int, int],
    *,
    singular_values: Callable[[], object] | None = None,
    vbmf_matrix: Callable[[], object] | None = None,
    macs_for: Callable[..., float] | None = None,
    original_macs: float | None = None,
    round_to: int = 1,
) -> int | tuple[int, int]:
    """:func:`select_rank` (``max_rank`` an int) or :func:`select_rank_pair` (``max_rank`` a
    pair ``(F, C)``) for a pass's ``selector`` = ``("rank" | "energy" | "vbmf" | "speedup",
    value)``. ``singular_values`` and ``vbmf_matrix`` are callables, called only when the
    selector needs them (for a pair they return one value per unfolding); ``macs_for``
    takes one rank, or ``(rank_out, rank_in)`` for a pair."""
    key, value = selector
    pair = isinstance(max_rank, tuple)
    values = None
    if key == "rank":
        kwargs: dict = {"rank": value}
    elif key == "energy":
        kwargs = {"energy": value}
        values = singular_values()
    elif key == "vbmf":
        kwargs = {"vbmf_matrices" if pair else "vbmf_matrix": vbmf_matrix()}
    elif key == "speedup":
        kwargs = {"speedup": value, "macs_for_ranks" if pair else "macs_for_rank": macs_for,
                  "original_macs": original_macs}
    else:
        raise ValueError(f"unknown rank selector {key!r}")
    if pair:
        return select_rank_pair(values, max_rank, round_to=round_to, **kwargs)
    return select_rank(values, max_rank, round_to=round_to, **kwargs)
