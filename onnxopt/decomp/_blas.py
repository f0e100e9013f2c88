"""Best-effort limit on BLAS threads while a decomposition runs.

Measured on this 2-core machine while other processes were busy (load ~9): numpy's
OpenBLAS with its default 2 threads ran CP-ALS over ResNet-56's 55 kernels in 130 s and
Tucker-2 in 1.3 s; with one thread, 7.4 s and 0.08 s. The R×R solves and small GEMMs of
the decompositions are too small to amortise thread hand-offs, and a busy-waiting BLAS
thread that loses its core stalls every call. Even a 512×512×3×3 kernel (Tucker-2 at
256×256: 0.7 s vs 8.0 s) was faster on one thread there. So the heavy routines run with
one BLAS thread by default (``blas_threads=None`` leaves BLAS alone).

Uses threadpoolctl (works with OpenBLAS, MKL and BLIS). The limit is process-wide while
the block runs and restored afterwards.
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
