"""The pre-commit hook, run by the real ``pre-commit`` tool on a temporary git repository.

Two modes, chosen by what the repository's HEAD commit holds:

* HEAD has ``.pre-commit-hooks.yaml`` and the check command: the config points at this
  repository (``repo: <root>``, ``rev: <HEAD>``), so pre-commit clones it and installs
  onnxopt with its dependencies from PyPI into its own environment, as in any other
  repository (network access needed; about a minute).
  ``ONNXOPT_TEST_HOOK_REPO=<git repo>`` points this mode at another clone or snapshot.
* otherwise (the hook file is not committed yet): a ``repo: local`` hook built from the
  working tree's ``.pre-commit-hooks.yaml`` entry (same id, files, types), run with
  ``language: system`` on this environment's ``onnxopt``.

Either way a good model passes and a broken one fails the commit check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, tiny_conv_model

PRE_COMMIT = Path(sys.executable).parent / "pre-commit"
# The repository pre-commit clones in the remote mode; overridable to try that mode on a
# snapshot before the hook is committed here.
HOOK_REPO = Path(os.environ.get("ONNXOPT_TEST_HOOK_REPO", REPO))
NETWORK_TROUBLE = re.compile(
    r"Temporary failure in name resolution|NewConnectionError|Network is unreachable|"
    r"No matching distribution found|Could not find a version that satisfies"
)


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _committed(path: str) -> bool:
    return subprocess.run(["git", "-C", str(HOOK_REPO), "cat-file", "-e", f"HEAD:{path}"],
                          capture_output=True).returncode == 0


def _hook_definition() -> dict:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    (hook,) = [h for h in hooks if h["id"] == "onnxopt-check"]
    return hook


def test_hook_file_defines_onnxopt_check():
    hook = _hook_definition()
    assert hook["entry"] == "onnxopt check"
    assert hook["language"] == "python"
    assert hook["files"] == r"\.onnx$" and re.search(hook["files"], "models/a.onnx")
    assert hook["types"] == ["file"]
    assert hook.get("pass_filenames", True) is True


def _config(remote: bool) -> tuple[str, str]:
    if remote:
        rev = _git("rev-parse", "HEAD", cwd=HOOK_REPO)
        return (f"repos:\n  - repo: {HOOK_REPO}\n    rev: {rev}\n    hooks:\n      - id: onnxopt-check\n",
                f"remote repository at {rev[:12]}")
    hook = _hook_definition()
    local = {
        "id": hook["id"], "name": hook["name"], "files": hook["files"], "types": hook["types"],
        "language": "system", "entry": f"{Path(sys.executable).parent / 'onnxopt'} check",
    }
    return yaml.safe_dump({"repos": [{"repo": "local", "hooks": [local]}]}), "local hook (not committed yet)"


@pytest.mark.skipif(not PRE_COMMIT.exists(), reason=f"pre-commit is not installed next to {sys.executable}")
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_pre_commit_passes_a_good_model_and_fails_a_bad_one(tmp_path):
    remote = _committed(".pre-commit-hooks.yaml") and _committed("onnxopt/cli/check.py")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    _git("config", "user.name", "onnxopt tests", cwd=repo)
    _git("config", "user.email", "tests@onnxopt.invalid", cwd=repo)
    _git("config", "commit.gpgsign", "false", cwd=repo)
    text, mode = _config(remote)
    (repo / ".pre-commit-config.yaml").write_text(text)
    good = repo / "models" / "good.onnx"
    good.parent.mkdir()
    model = tiny_conv_model()
    model.graph.node[0].name = "conv"
    good.write_bytes(model.SerializeToString())
    (repo / "notes.txt").write_text("not a model: the hook must not see it\n")
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "good model", cwd=repo)

    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "PRE_COMMIT_COLOR": "never"}
    env.pop("PRE_COMMIT", None)

    def pre_commit(*files: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(PRE_COMMIT), "run", "--files", *files], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=1800)

    result = pre_commit("models/good.onnx", "notes.txt")
    output = result.stdout + result.stderr
    if result.returncode != 0 and remote and NETWORK_TROUBLE.search(output):
        pytest.skip(f"pre-commit could not install onnxopt from PyPI (no network?): {mode}")
    assert result.returncode == 0, f"{mode}\n{output}"
    assert re.search(r"onnxopt check.*Passed", output), output

    bad = repo / "models" / "bad.onnx"
    bad.write_bytes(good.read_bytes()[:100])  # truncated
    _git("add", "models/bad.onnx", cwd=repo)
    result = pre_commit("models/good.onnx", "models/bad.onnx")
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"{mode}\n{output}"
    assert re.search(r"onnxopt check.*Failed", output), output
    assert "models/bad.onnx: error: load-error: " in output
    assert "good.onnx: error" not in output
