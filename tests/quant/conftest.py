"""The INT8 defaults depend on the host CPU (``onnxopt.runtime.cpu``: 7-bit weights and float
stems where u8×s8 kernels saturate). The unit tests here pin a VNNI CPU so that they
assert the same structure everywhere; ``tests/quant/test_reduce_range.py`` pins the
other kinds, and tests that take the ``real_cpu`` fixture (the real-model ones) run
with this machine's own CPU."""

from __future__ import annotations

import pytest

from onnxopt.runtime import cpu as hostcpu


@pytest.fixture
def real_cpu():
    """Run with the host's real integer-kernel facts."""
    return hostcpu.integer_kernels()


@pytest.fixture
def host(monkeypatch):
    """Pretend to run on a given CPU: ``host(hostcpu.IntegerKernels(x86=True, vnni=False))``."""
    def use(kernels: hostcpu.IntegerKernels) -> None:
        monkeypatch.setattr(hostcpu, "integer_kernels", lambda: kernels)
    return use


@pytest.fixture(autouse=True)
def _pinned_cpu(request, host):
    if "real_cpu" not in request.fixturenames:
        host(hostcpu.IntegerKernels(x86=True, vnni=True))
