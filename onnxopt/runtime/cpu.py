"""What this machine's CPU offers onnxruntime's integer kernels (for the INT8 defaults).

On x86, onnxruntime's u8×s8 GEMM/conv kernels (MLAS) use ``vpdpbusd`` where the CPU has
VNNI (AVX-512 VNNI or AVX-VNNI): it multiplies u8 by s8 and accumulates in int32, exactly.
Without VNNI (plain AVX2 or AVX-512F/BW) they use ``vpmaddubsw``, which adds each *pair*
of u8·s8 products into a saturating int16: 2 · 255 · 127 = 64770 > 32767, so large
activations times large weights clip. Quantizing weights to 7 bits (onnxruntime's
``reduce_range``) keeps every pair within int16 (2 · 255 · 64 = 32640). Measured on an
AVX2 AMD EPYC (no VNNI): ResNet-56 INT8 with 8-bit weights agreed with FP32 on 0.87 of
400 photos (mean softmax KL 0.165); with 7-bit weights 0.95 (KL 0.017).

ARM and other architectures do not use that kernel: nothing to work around there.

onnxruntime can also run exactly on such a CPU (``EXACT_INTEGER_KERNELS``: u8×u8 kernels,
slower): the integer results a VNNI CPU computes, for judging a model made for one.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from types import MappingProxyType

_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni"}  # /proc/cpuinfo spellings
_NUMPY_VNNI = ("AVX512VNNI", "AVX512_ICL", "AVX512_SPR")  # numpy's feature names implying VNNI

#: onnxruntime session config for x86 integer kernels that accumulate u8×s8 products
#: exactly (through u8×u8) on CPUs without VNNI; no effect elsewhere.
EXACT_INTEGER_KERNELS = MappingProxyType({"session.x64quantprecision": "1"})


@dataclass(frozen=True)
class IntegerKernels:
    x86: bool
    vnni: bool | None  # None: could not be read (not Linux and numpy does not say)

    @property
    def u8s8_saturates(self) -> bool:
        """Whether u8×s8 products may clip in int16 here (x86 without VNNI, or unknown x86)."""
        return self.x86 and not self.vnni

    def describe(self) -> str:
        if not self.x86:
            return f"{platform.machine() or 'unknown'} CPU"
        if self.vnni is None:
            return "x86 CPU (VNNI support unknown)"
        return "x86 CPU with VNNI" if self.vnni else "x86 CPU without VNNI (AVX2 int16 u8×s8 kernels)"


@functools.lru_cache(maxsize=1)
def integer_kernels() -> IntegerKernels:
    """The host's integer-kernel facts, read once."""
    if platform.machine().lower() not in _X86:
        return IntegerKernels(x86=False, vnni=False)
    flags = _cpuinfo_field("flags")
    if flags is not None:
        return IntegerKernels(x86=True, vnni=bool(set(flags.split()) & _VNNI_FLAGS))
    return IntegerKernels(x86=True, vnni=_numpy_vnni())


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC"), for reports and cache keys."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def _cpuinfo_field(key: str) -> str | None:
    """The first ``key : value`` of /proc/cpuinfo (Linux), else None."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(key):
                    return line.partition(":")[2].strip()
    except OSError:
        return None
    return None


def _numpy_vnni() -> bool | None:
    """numpy's runtime CPU dispatch table (a private name, moved in numpy 2; absent in some
    builds). It has no AVX-VNNI entry: a CPU with AVX-VNNI only reads as without VNNI
    here, which costs accuracy headroom (7-bit weights), never correctness."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return None
    return any(features.get(name) for name in _NUMPY_VNNI)
