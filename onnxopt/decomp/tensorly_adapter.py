"""tensorly's decompositions behind the same factor shapes as ``tucker`` and ``cp``.

The only module in onnxopt that imports tensorly, and only inside the functions, so that
``import onnxopt.decomp`` stays light and works without it. Used by the benchmark to
compare our SVD-based Tucker-2 / constructive-start CP-ALS with tensorly's defaults.

tensorly's API moved between releases, both forms are handled:

* ``partial_tucker``: 0.8+ is ``partial_tucker(tensor, rank, modes=None, ...)`` returning
  ``((core, factors), rec_errors)``; ≤ 0.7 is ``partial_tucker(tensor, modes, rank=None,
  ..., ranks=None)`` (older still: ``ranks=`` only) returning ``(core, factors)``.
* ``parafac``: returns a ``CPTensor`` / ``KruskalTensor`` (``weights, factors``), a plain
  ``(weights, factors)`` tuple, or — in the oldest releases — just the list of factors.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np

from .cp import CP, _pack
from .tucker import Tucker2, tucker2_reconstruct

__all__ = ["tl_parafac", "tl_partial_tucker", "tensorly_version"]


def tensorly_version() -> str:
    import tensorly

    return tensorly.__version__


def _numpy_backend():
    import tensorly as tl

    if tl.get_backend() != "numpy":
        tl.set_backend("numpy")
    return tl


def tl_partial_tucker(W: np.ndarray, ranks: tuple[int, int], **kwargs) -> Tucker2:
    """tensorly ``partial_tucker`` on modes (0, 1) of W [F, C, kh, kw] with its defaults.

    ``ranks = (rank_out, rank_in)`` as in ``tucker2``; extra kwargs go to tensorly.
    """
    _numpy_backend()
    from tensorly.decomposition import partial_tucker

    W64 = np.asarray(W, dtype=np.float64)
    params = inspect.signature(partial_tucker).parameters
    rank_kw = "rank" if "rank" in params else "ranks"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*", category=UserWarning)
        res = partial_tucker(W64, modes=[0, 1], **{rank_kw: list(ranks)}, **kwargs)
    # new: ((core, factors), errors); old: (core, factors)
    if isinstance(res[0], (tuple, list)):
        res = res[0]
    core, factors = res
    U_out, U_in = (np.asarray(f, dtype=np.float64) for f in factors[:2])
    F, C = W64.shape[:2]
    first = np.ascontiguousarray(U_in.T.reshape(-1, C, 1, 1), dtype=np.float32)
    core32 = np.ascontiguousarray(core, dtype=np.float32)
    last = np.ascontiguousarray(U_out.reshape(F, -1, 1, 1), dtype=np.float32)
    W_hat = tucker2_reconstruct(first, core32, last)
    return Tucker2(first, core32, last, float(np.linalg.norm(W64 - W_hat) / np.linalg.norm(W64)))


def tl_parafac(W: np.ndarray, rank: int, n_iter_max: int = 100, init: str = "svd", **kwargs) -> CP:
    """tensorly ``parafac`` (its default ALS, init and tolerance) as a ``CP`` of W.

    ``iterations`` is reported as -1 (tensorly does not return it unless asked for errors).
    """
    _numpy_backend()
    from tensorly.decomposition import parafac

    W64 = np.asarray(W, dtype=np.float64)
    with warnings.catch_warnings():
        # "n_eigenvecs larger than min(matrix.shape)": expected whenever rank > a mode size
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*", category=UserWarning)
        res = parafac(W64, rank, n_iter_max=n_iter_max, init=init, **kwargs)
    if hasattr(res, "factors"):
        weights, factors = res.weights, res.factors
    elif isinstance(res, (tuple, list)) and len(res) == 2 and np.ndim(res[0]) == 1:
        weights, factors = res
    else:  # oldest releases: the factors only
        weights, factors = None, res
    A, B, V, H = (np.asarray(f, dtype=np.float64) for f in factors)
    lam = np.ones(A.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    return _pack(lam, A, B, V, H, W64, -1)
