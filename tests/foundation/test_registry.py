"""Pass specs, option typing, config files and 'did you mean' errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest

from onnxopt.errors import UsageError
from onnxopt.passbase import OptimizerPass, option
from onnxopt.registry import build_options, build_passes, describe_passes, get, load_config, parse_spec


@dataclass(frozen=True)
class _Opts:
    energy: float | None = option(None, "energy")
    count: int = option(3, "count")
    flag: bool = option(False, "flag")
    method: Literal["minmax", "entropy"] = option("minmax", "method")
    exclude: tuple[str, ...] = option((), "globs")


class _Fake(OptimizerPass):
    name = "fake"
    Options = _Opts


def test_parse_spec_grammar():
    specs = parse_spec("simplify,tucker:energy=0.95:min_macs=1e6,fp16")
    assert [s.name for s in specs] == ["simplify", "tucker", "fp16"]
    assert specs[1].options == {"energy": "0.95", "min_macs": "1e6"}
    assert str(specs[1]) == "tucker:energy=0.95:min_macs=1e6"


def test_bare_key_is_true_and_lists_split_on_bar():
    (spec,) = parse_spec("fake:flag:exclude=conv1*|fc")
    opts = build_options(_Fake, spec.options)
    assert opts.flag is True
    assert opts.exclude == ("conv1*", "fc")


def test_option_typing():
    opts = build_options(_Fake, {"energy": "0.9", "count": "1e1", "method": "entropy"})
    assert opts.energy == 0.9 and opts.count == 10 and opts.method == "entropy"
    assert build_options(_Fake, {"energy": "none"}).energy is None


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"count": "2.5"}, "expected an integer"),
        ({"energy": "high"}, "expected a number"),
        ({"flag": "maybe"}, "expected true or false"),
        ({"method": "entropi"}, "did you mean 'entropy'"),
        ({"cnt": "2"}, "unknown option 'cnt'; did you mean 'count'"),
    ],
)
def test_bad_options(raw, message):
    with pytest.raises(UsageError, match=message):
        build_options(_Fake, raw)


def test_unknown_pass_did_you_mean():
    with pytest.raises(UsageError, match="did you mean 'simplify'"):
        get("simplfy")


@pytest.mark.parametrize("text", ["simplify,,fold-constants", "simplify:=3", "simplify:optimize=1:optimize=0"])
def test_malformed_specs(text):
    with pytest.raises(UsageError):
        parse_spec(text)


def test_whole_pipeline_validated_before_any_pass_is_built():
    with pytest.raises(UsageError, match="unknown pass 'nope'"):
        build_passes(parse_spec("simplify,nope"))


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_config_formats(tmp_path, suffix):
    texts = {
        ".yaml": "passes:\n  - simplify\n  - {name: fold-constants, min_elements: 32}\n",
        ".toml": 'passes = ["simplify", {name = "fold-constants", min_elements = 32}]\n',
        ".json": json.dumps({"passes": ["simplify", {"name": "fold-constants", "min_elements": 32}]}),
    }
    path = tmp_path / f"pipeline{suffix}"
    path.write_text(texts[suffix])
    specs = load_config(path)
    assert [s.name for s in specs] == ["simplify", "fold-constants"]
    passes = build_passes(specs)
    assert passes[1].options.min_elements == 32


def test_config_errors(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("passes: [simplify\n")
    with pytest.raises(UsageError, match="invalid YAML"):
        load_config(bad)
    extra = tmp_path / "q.json"
    extra.write_text('{"passes": ["simplify"], "pases": []}')
    with pytest.raises(UsageError, match="unknown top-level key"):
        load_config(extra)
    ini = tmp_path / "r.ini"
    ini.write_text("x")
    with pytest.raises(UsageError, match="unknown config format"):
        load_config(ini)


def test_describe_passes_lists_options_and_capabilities():
    rows = {row["name"]: row for row in describe_passes()}
    assert rows["simplify"]["lossless"] is True
    assert rows["simplify"]["capability"].startswith("lossless")
    option_names = [o["name"] for o in rows["fold-constants"]["options"]]
    assert option_names == ["min_elements"]
    assert all(o["help"] for row in rows.values() for o in row["options"])


def test_bare_key_on_a_list_option_is_an_error():
    with pytest.raises(UsageError, match="expected a value"):
        build_options(_Fake, {"exclude": True})


def test_binary_config_is_a_usage_error(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(bytes(range(128, 256)) * 3)
    with pytest.raises(UsageError, match="not a text file"):
        load_config(path)
