"""CLI: tables, JSON, and one-line errors with exit code 2."""

import json

import pytest

from tuneplan.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_table(capsys):
    code, out, _ = run(capsys, "estimate", "llama-3.1-8b", "--method", "qlora", "--seq-len", "4096")
    assert code == 0
    assert "GiB" in out and "Peak" in out and "Assumes" in out and "Quantisation constants" in out


def test_estimate_json(capsys):
    code, out, _ = run(capsys, "estimate", "qwen2.5-0.5b", "--method", "full", "--json")
    data = json.loads(out)
    assert code == 0 and data["unit"] == "bytes"
    assert data["peak_bytes"] == sum(c["bytes"] for c in data["components"])


def test_models_lists_catalog(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and len(json.loads(out)) >= 40


@pytest.mark.parametrize("argv,msg", [
    (["estimate", "llama-3.1-8x"], "did you mean"),
    (["estimate", "llama-3.1-8b", "--batch", "0"], "must be positive"),
    (["estimate", "llama-3.1-8b", "--seq-len", "-5"], "must be positive"),
    (["estimate", "llama-3.1-8b", "--rank", "9000"], "larger than the hidden size"),
    (["estimate", "llama-3.1-8b", "--precision", "fp6"], "unknown precision"),
    (["estimate", "llama-3.1-8b", "--method", "qlora-3bit"], "unknown method"),
    (["estimate", "llama-3.1-8b", "--batch", "two"], "whole number"),
    (["estimate", "/nonexistent/config.json"], "cannot read"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, msg):
    with pytest.raises(SystemExit) if "two" in argv else _noop():
        code, out, err = run(capsys, *argv)
        assert code == 2
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_malformed_config_via_cli(tmp_path, capsys):
    p = tmp_path / "config.json"
    p.write_text("{broken")
    code, _, err = run(capsys, "estimate", str(p))
    assert code == 2 and "not valid JSON" in err
