"""The broken-model corpus: each case yields an error with the right rule id, through the
library and through the real command line (exit 1, one line per finding, no traceback)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from onnxopt.check import check_model_file
from tests.check.corpus import CASES, build_all
from tests.helpers import cli

LINE = re.compile(r"^(?P<path>.+): (?P<level>error|warning): (?P<rule>[a-z0-9-]+): (?P<message>\S.*)$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("corpus"))


def test_corpus_is_large_enough():
    assert len(CASES) >= 15
    assert len({case.rule for case in CASES}) >= 9


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_broken_model_yields_its_rule(corpus, name):
    path, rule = corpus[name]
    findings = check_model_file(path)
    assert any(f.rule == rule and f.level == "error" for f in findings), findings
    for finding in findings:
        assert "\n" not in finding.message and finding.message
        assert LINE.match(str(finding)), str(finding)


def test_whole_corpus_through_the_cli(corpus):
    paths = [str(path) for path, _ in corpus.values()]
    result = cli("check", *paths)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr and stderr.strip() == "", stderr
    lines = stdout.strip().splitlines()
    assert lines[-1].startswith(f"{len(paths)} files checked: "), lines[-1]
    parsed = [LINE.match(line) for line in lines[:-1]]
    assert all(parsed), [line for line, m in zip(lines, parsed) if not m]
    reported = {(m["path"], m["rule"]) for m in parsed if m["level"] == "error"}
    for name, (path, rule) in corpus.items():
        assert (str(path), rule) in reported, name


# The malformed inputs of the foundation issue: with `check`, each is a finding (exit 1),
# not a usage error (exit 2) and not a traceback.
FOUNDATION_CASES = ["empty file", "truncated protobuf", "random bytes", "non-onnx protobuf",
                    "dangling input (fails checker)", "missing external data", "escaping external data"]


@pytest.mark.parametrize("name", FOUNDATION_CASES)
def test_foundation_bad_input_is_a_finding(corpus, name):
    path, rule = corpus[name]
    before = path.read_bytes()
    result = cli("check", str(path))
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr
    assert f"{path}: error: {rule}: " in stdout
    assert path.read_bytes() == before


def test_stdin_closed_is_a_finding():
    result = subprocess.run(f"{sys.executable} -m onnxopt check - <&-", shell=True, capture_output=True,
                            executable="/bin/bash")
    stdout = result.stdout.decode()
    assert result.returncode == 1, result.stderr.decode()
    assert "<stdin>: error: load-error: " in stdout and "stdin" in stdout
    assert "Traceback" not in result.stderr.decode()


def test_stdin_empty_is_a_finding():
    result = cli("check", "-", stdin=open(os.devnull, "rb"))
    assert result.returncode == 1
    assert "<stdin>: error: load-error: empty file" in result.stdout.decode()


def test_external_data_from_stdin_is_a_finding(corpus):
    path, _ = corpus["missing external data"]
    result = cli("check", "-", input=path.read_bytes())
    assert result.returncode == 1
    assert "<stdin>: error: external-data: " in result.stdout.decode()


def test_missing_file_is_a_finding(tmp_path):
    result = cli("check", str(tmp_path / "nope.onnx"))
    assert result.returncode == 1
    assert f"{tmp_path / 'nope.onnx'}: error: load-error: no such file" in result.stdout.decode()
