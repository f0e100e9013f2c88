"""decomp never imports onnx; tensorly only inside functions of tensorly_adapter; the
tensorly adapter returns our factor shapes."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import onnxopt.decomp as decomp

DECOMP = Path(decomp.__file__).parent


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, node.module


def test_no_onnx_and_tensorly_only_lazily_in_adapter():
    files = sorted(DECOMP.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        tree = ast.parse(path.read_text())
        module_level = {id(n) for n in tree.body}
        for node, name in _imports(tree):
            root = name.split(".")[0]
            assert root != "onnx" and not root.startswith("onnxruntime"), f"{path.name} imports {name}"
            if root == "tensorly":
                assert path.name == "tensorly_adapter.py", f"{path.name} imports tensorly"
                assert id(node) not in module_level, "tensorly must be imported inside functions"


def test_public_api_is_exported():
    for name in ("select_rank", "select_rank_pair", "evbmf", "tucker2", "cp4", "spatial_factors", "separable_factors",
                 "lowrank_matrix", "LastFactorRefit", "truncated_svd", "relative_error", "cp_exact_rank_upper_bound"):
        assert callable(getattr(decomp, name)), name
    assert set(decomp.__all__) <= set(dir(decomp))


def test_tensorly_adapter_shapes_and_exactness():
    pytest.importorskip("tensorly")
    from onnxopt.decomp.tensorly_adapter import tl_parafac, tl_partial_tucker

    W = np.random.default_rng(0).standard_normal((6, 4, 3, 3))
    t = tl_partial_tucker(W, (6, 4))
    assert (t.first.shape, t.core.shape, t.last.shape) == ((4, 4, 1, 1), (6, 4, 3, 3), (6, 6, 1, 1))
    assert t.rel_error < 1e-5
    t = tl_partial_tucker(W, (3, 2))
    assert (t.first.shape, t.core.shape, t.last.shape) == ((2, 4, 1, 1), (3, 2, 3, 3), (6, 3, 1, 1))
    c = tl_parafac(W, 5, n_iter_max=5)
    assert (c.last.shape, c.first.shape, c.vertical.shape, c.horizontal.shape) == (
        (6, 5, 1, 1), (5, 4, 1, 1), (5, 1, 3, 1), (5, 1, 1, 3))
    assert 0 < c.rel_error < 1


def test_tensorly_adapter_handles_the_old_api(monkeypatch):
    tl_decomp = pytest.importorskip("tensorly.decomposition")
    from onnxopt.decomp.tensorly_adapter import tl_parafac, tl_partial_tucker

    W = np.random.default_rng(1).standard_normal((5, 4, 3, 3))
    new = tl_partial_tucker(W, (3, 2))
    calls = []

    def old_partial_tucker(tensor, modes, ranks=None, n_iter_max=100, init="svd", tol=10e-5):
        # tensorly <= 0.4: modes positional, ``ranks=``, returns (core, factors)
        calls.append((tuple(modes), tuple(ranks)))
        U0 = np.linalg.svd(tensor.reshape(5, -1))[0][:, : ranks[0]]
        U1 = np.linalg.svd(tensor.transpose(1, 0, 2, 3).reshape(4, -1))[0][:, : ranks[1]]
        return np.einsum("fcij,fb,ca->baij", tensor, U0, U1), [U0, U1]

    monkeypatch.setattr(tl_decomp, "partial_tucker", old_partial_tucker)
    old = tl_partial_tucker(W, (3, 2))
    assert calls == [((0, 1), (3, 2))]
    assert old.core.shape == new.core.shape == (3, 2, 3, 3)
    assert old.rel_error >= new.rel_error - 1e-6  # HOSVD vs converged HOOI

    rng = np.random.default_rng(2)
    factors = [rng.standard_normal((n, 2)) for n in (5, 4, 3, 3)]
    monkeypatch.setattr(tl_decomp, "parafac", lambda *a, **k: factors)  # oldest: factors only
    c = tl_parafac(W, 2)
    np.testing.assert_allclose(c.last[:, :, 0, 0], factors[0], rtol=1e-6)
    monkeypatch.setattr(tl_decomp, "parafac", lambda *a, **k: (np.full(2, 2.0), factors))
    c = tl_parafac(W, 2)
    np.testing.assert_allclose(c.last[:, :, 0, 0], 2 * factors[0], rtol=1e-6)
    np.testing.assert_allclose(c.vertical[:, 0, :, 0], factors[2].T, rtol=1e-6)


def test_blas_threads_limits_and_restores():
    from threadpoolctl import threadpool_info

    from onnxopt.decomp._blas import blas_threads

    def threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = threads()
    if not before:
        pytest.skip("no BLAS library visible to threadpoolctl")
    with blas_threads(1):
        assert set(threads()) == {1}
    assert threads() == before
    with blas_threads(None):
        assert threads() == before


