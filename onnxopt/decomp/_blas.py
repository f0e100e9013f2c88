"""Best-effort limit on BLAS threads while a decomposition runs.

The decompositions' R×R solves and small GEMMs are too small to amortise BLAS thread
hand-offs, and a busy-waiting BLAS thread that loses its core stalls every call, so the
heavy routines run on one BLAS thread by default (``blas_threads=None`` leaves BLAS
alone); parallelism comes from decomposing layers concurrently (``--jobs``) instead.
Uses threadpoolctl (OpenBLAS, MKL, BLIS); the limit is process-wide while the block runs
and restored afterwards.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` BLAS threads (``None``: unchanged)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n), user_api="blas"):
        yield
