"""Best-effort limit on BLAS threads while a decomposition runs.

Measured on this 2-core machine while other processes were busy (load ~9): numpy's
OpenBLAS with its default 2 threads ran CP-ALS over ResNet-56's 55 kernels in 130 s and
Tucker-2 in 1.3 s; with one thread, 7.4 s and 0.08 s. The R×R solves and small GEMMs of
the decompositions are too small to amortise thread hand-offs, and a busy-waiting BLAS
thread that loses its core stalls every call. Even a 512×512×3×3 kernel (Tucker-2 at
256×256: 0.7 s vs 8.0 s) was faster on one thread there. So the heavy routines run with
one BLAS thread by default (``blas_threads=None`` leaves BLAS alone).

Uses threadpoolctl when installed; otherwise calls the thread setter of the OpenBLAS
bundled with numpy's wheels through ctypes; otherwise does nothing. The limit is
process-wide while the block runs and restored afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
from collections.abc import Iterator
from functools import lru_cache

log = logging.getLogger(__name__)

_SYMBOLS = [
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
]


@lru_cache(maxsize=1)
def _openblas_functions():
    import numpy

    base = os.path.dirname(os.path.abspath(numpy.__file__))
    paths = glob.glob(os.path.join(base, os.pardir, "numpy.libs", "*openblas*"))
    paths += glob.glob(os.path.join(base, ".dylibs", "*openblas*"))
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: same handle
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            get_fn, set_fn = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get_fn is not None and set_fn is not None:
                get_fn.restype = ctypes.c_int
                set_fn.argtypes = [ctypes.c_int]
                return get_fn, set_fn
    return None


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` BLAS threads (``None``: unchanged)."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=int(n), user_api="blas"):
            yield
        return
    fns = _openblas_functions()
    if fns is None:
        yield
        return
    get_fn, set_fn = fns
    before = get_fn()
    set_fn(int(n))
    try:
        yield
    finally:
        set_fn(before)
