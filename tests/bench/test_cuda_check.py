"""benchmarks/cuda_check.py where CUDA does not load: one line saying why, exit 0.

On a GPU machine the script itself is the check (its output is quoted in the README);
this test covers the path every other machine takes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onnxopt.runtime import cuda_status

REPO = Path(__file__).resolve().parents[2]
CUDA_OK, _ = cuda_status()


@pytest.mark.parametrize("script", ["cuda_check.py", "cuda_settings.py"])
@pytest.mark.skipif(CUDA_OK, reason="CUDA loads on this machine: the script runs its checks instead")
def test_cuda_scripts_say_why_they_skip_and_exit_0(script, tmp_path):
    args = [sys.executable, str(REPO / "benchmarks" / script)]
    if script == "cuda_settings.py":
        args.append(str(tmp_path))
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "CUDA provider does not load here" in lines[0]
    assert "(" in lines[0] and lines[0].endswith(")")  # the probe's reason, e.g. a missing library
