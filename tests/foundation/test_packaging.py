"""passes/ is importable as onnxopt.passes from both the editable install and a built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.helpers import REPO

PROBE = (
    "import onnxopt, onnxopt.passes as p, onnxopt.cli.main;"
    "from onnxopt.registry import available;"
    "print(onnxopt.__file__); print(p.__file__); print(sorted(available()))"
)


def test_editable_install_imports_passes():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    onnxopt_file, passes_file, names = result.stdout.splitlines()
    assert passes_file == str(REPO / "passes" / "__init__.py")
    assert "simplify" in names


def test_wheel_contains_and_imports_passes(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("onnxopt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "onnxopt/passes/__init__.py" in names
    assert "onnxopt/passes/simplify.py" in names
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert installed.returncode == 0, installed.stderr
    # PYTHONPATH precedes the editable install's finder, so this imports the wheel's copy.
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd="/",
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    onnxopt_file, passes_file, names = result.stdout.splitlines()
    assert onnxopt_file.startswith(str(target)) and passes_file.startswith(str(target))
    assert "simplify" in names
