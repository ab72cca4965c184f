"""The web API of `tuneplan serve`: the same JSON as the CLI's --json for the same job, and
every bad input a 4xx one-line JSON error (never a stack trace, never a server-side path)."""

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from tuneplan.cli import main  # noqa: E402
from tuneplan.models import catalog  # noqa: E402
from tuneplan.web import app as web  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src" / "tuneplan"


@pytest.fixture(scope="module")
def client():
    with TestClient(web.create_app(), base_url="http://127.0.0.1") as c:
        yield c


def cli_json(capsys, *argv):
    """What `tuneplan ARGV --json` prints, parsed, with non-finite numbers as the API writes them."""
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def ok(r):
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


# ---------------------------------------------------------------- the same JSON as the CLI

@pytest.mark.parametrize("query,argv", [
    ({"model": "llama-3.1-8b", "method": "qlora", "seq-len": "4096", "batch": "2"},
     ["llama-3.1-8b", "--method", "qlora", "--seq-len", "4096", "--batch", "2"]),
    ({"model": "qwen2.5-7b", "method": "full", "gpus": "8", "sharding": "zero3", "optimizer": "adamw-8bit"},
     ["qwen2.5-7b", "--method", "full", "--gpus", "8", "--sharding", "zero3", "--optimizer", "adamw-8bit"]),
    ({"model": "Llama-3.1-8B-Instruct", "targets": "attn", "rank": "64", "checkpointing": "none", "fused-ce": "1"},
     ["Llama-3.1-8B-Instruct", "--targets", "attn", "--rank", "64", "--checkpointing", "none", "--fused-ce"]),
])
def test_estimate_is_the_cli_json(client, capsys, query, argv):
    assert ok(client.get("/api/estimate", params=query)) == cli_json(capsys, "estimate", *argv)


@pytest.mark.parametrize("query,argv", [
    ({"model": "llama-3.1-8b", "method": "lora", "batch": "16", "gpu": "rtx-4090"},
     ["llama-3.1-8b", "--method", "lora", "--batch", "16", "--gpu", "rtx-4090"]),
    ({"model": "llama-3.1-70b", "method": "full", "gpu": "h100"}, ["llama-3.1-70b", "--method", "full", "--gpu", "h100"]),
    ({"model": "qwen2.5-14b", "method": "qlora", "seq-len": "8k", "gpu": "mac-studio-m4-max"},
     ["qwen2.5-14b", "--method", "qlora", "--seq-len", "8k", "--gpu", "mac-studio-m4-max"]),
])
def test_fit_is_the_cli_estimate_gpu_json(client, capsys, query, argv):
    expected = cli_json(capsys, "estimate", *argv)
    assert "fit" in expected and expected["fit"]["max_seq_len"] is not None
    assert ok(client.get("/api/fit", params=query)) == expected
    assert ok(client.get("/api/estimate", params=query)) == expected


@pytest.mark.parametrize("query,argv", [
    ({"model": "mistral-7b", "method": "qlora", "samples": "50k", "mean-tokens": "600", "devices": "consumer"},
     ["mistral-7b", "--method", "qlora", "--samples", "50k", "--mean-tokens", "600", "--devices", "consumer"]),
    ({"model": "llama-3.2-1b", "dataset-tokens": "1M", "devices": "rtx-4090,h100", "rank-by": "cost", "top": "3"},
     ["llama-3.2-1b", "--dataset-tokens", "1M", "--devices", "rtx-4090,h100", "--rank-by", "cost", "--top", "3"]),
    # an electricity price that never pays back: break-even is infinite ("Infinity" in the API)
    ({"model": "llama-3.1-8b", "usd-per-kwh": "100", "devices": "rtx-4090", "no-tune": "1"},
     ["llama-3.1-8b", "--usd-per-kwh", "100", "--devices", "rtx-4090", "--no-tune"]),
])
def test_plan_is_the_cli_json(client, capsys, query, argv):
    assert ok(client.get("/api/plan", params=query)) == cli_json(capsys, "plan", *argv)


def test_infinite_break_even_is_strict_json(client):
    r = client.get("/api/plan", params={"model": "llama-3.1-8b", "usd-per-kwh": "100", "devices": "rtx-4090"})
    assert "Infinity" in r.text
    json.loads(r.text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))


@pytest.mark.parametrize("query,argv", [
    ({}, []),
    ({"models": "llama-3.2-1b,qwen2.5-7b", "methods": "full,qlora,dora", "devices": "consumer", "seq-len": "4096",
      "optimizer": "adamw-8bit"},
     ["--models", "llama-3.2-1b,qwen2.5-7b", "--methods", "full,qlora,dora", "--devices", "consumer", "--seq-len",
      "4096", "--optimizer", "adamw-8bit"]),
    ({"models": "llama-3.1-8b", "gpus": "4", "sharding": "fsdp", "devices": "rtx-4090,dgx-spark"},
     ["--models", "llama-3.1-8b", "--gpus", "4", "--sharding", "fsdp", "--devices", "rtx-4090,dgx-spark"]),
])
def test_matrix_is_the_cli_json(client, capsys, query, argv):
    assert ok(client.get("/api/matrix", params=query)) == cli_json(capsys, "matrix", *argv)


def test_heatmap_is_the_matrix_laid_out(client):
    q = {"models": "llama-3.2-1b,llama-3.1-70b", "methods": "full,qlora", "devices": "rtx-4090,h100"}
    cells = ok(client.get("/api/matrix", params=q))["cells"]
    grid = ok(client.get("/api/heatmap", params=q))
    assert grid["rows"] == [[m, k] for m in ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.1-70B")
                            for k in ("full", "qlora")]
    assert grid["cols"] == ["rtx-4090", "h100-sxm"]
    flat = [(grid["verdicts"][i][k], grid["peak_bytes"][i][k]) for i in range(4) for k in range(2)]
    assert flat == [(c["verdict"], c["peak_bytes"]) for c in cells]


def test_models_and_devices_are_the_cli_json(client, capsys):
    assert ok(client.get("/api/models")) == cli_json(capsys, "models")
    assert ok(client.get("/api/devices")) == cli_json(capsys, "devices")
    assert ok(client.get("/api/devices", params={"category": "Unified"})) == \
        cli_json(capsys, "devices", "--category", "unified")


def test_export_is_the_file_the_cli_writes(client, capsys):
    for target in ("trl", "axolotl", "llamafactory", "torchtune", "unsloth"):
        r = client.get("/api/export", params={"model": "llama-3.1-8b", "method": "qlora", "seq-len": "4096",
                                              "to": target, "gpu": "rtx-4090"})
        assert r.status_code == 200, r.text
        capsys.readouterr()
        assert main(["export", "llama-3.1-8b", "--method", "qlora", "--seq-len", "4096", "--to", target,
                     "--gpu", "rtx-4090"]) == 0
        assert r.text == capsys.readouterr().out
        assert "attachment" in r.headers["content-disposition"]
        assert isinstance(json.loads(r.headers["x-tuneplan-cannot"]), list)


def test_uploaded_config_is_the_cli_with_that_file(client, capsys, tmp_path):
    cfg = dict(catalog()["Qwen/Qwen2.5-7B"].config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    expected = cli_json(capsys, "estimate", str(path), "--method", "qlora", "--gpu", "rtx-4090")
    got = ok(client.post("/api/estimate", params={"method": "qlora", "gpu": "rtx-4090", "name": str(path)},
                         content=json.dumps(cfg).encode()))
    assert got == expected
    # a name from the config itself, else "custom"; the plan and the matrix take the upload too
    cfg["_name_or_path"] = "me/my-model"
    assert ok(client.post("/api/estimate", content=json.dumps(cfg)))["model"] == "me/my-model"
    assert ok(client.post("/api/plan", params={"devices": "rtx-4090"}, content=json.dumps(cfg)))["model"] == \
        "me/my-model"
    cells = ok(client.post("/api/matrix", params={"devices": "rtx-4090"}, content=json.dumps(cfg)))["cells"]
    assert {c["model"] for c in cells} == {"me/my-model"} and len(cells) == 3
    assert client.post("/api/export", params={"to": "trl"}, content=json.dumps(cfg)).status_code == 200


def test_options_name_every_form_field_by_its_cli_option(client):
    o = ok(client.get("/api/options"))
    assert o["fields"]["micro_batch"]["option"] == "batch" and o["fields"]["seq_len"]["default"] == 2048
    assert o["setting_option"]["grad_accum"] == "grad-accum" and o["setting_option"]["num_gpus"] == "gpus"
    assert [t["name"] for t in o["export_targets"]][:5] == ["trl", "axolotl", "llamafactory", "torchtune", "unsloth"]
    assert o["limits"]["max_body_bytes"] == 1 << 20 and o["limits"]["max_matrix_cells"] == web.MAX_MATRIX_CELLS


def test_every_named_option_has_its_choices_and_a_form_control(client):
    """The form's selects come from the CLI's one choices table, so a new named option (compile,
    runtime) reaches the page; each has a control in index.html."""
    from importlib import resources

    from tuneplan.cli.options import CHOICES

    o = ok(client.get("/api/options"))
    html = resources.files("tuneplan.web").joinpath("static/index.html").read_text()
    for key, names in CHOICES.items():
        assert o["choices"][key] == list(names)
        if key not in ("targets", "task", "stack"):  # targets is a datalist; task and stack are CLI-only
            assert f'data-choices="{key}"' in html, key
    assert o["choices"]["compile"] == ["none", "inductor"] and "mlx-metal" in o["choices"]["runtime"]


# ---------------------------------------------------------------- bad input: 4xx, one line of JSON

def error_of(r, status=400):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"], body
    assert "\n" not in body["error"] and "Traceback" not in body["error"] and body["error"]
    return body["error"]


@pytest.mark.parametrize("path,query,msg", [
    ("/api/estimate", {"model": "llama-3.1-8x"}, "did you mean"),
    ("/api/estimate", {}, "give model=NAME"),
    ("/api/estimate", {"model": "  "}, "empty"),
    ("/api/estimate", {"model": "llama-3.1-8b", "method": "full", "rank": "64"}, "rank does not apply"),
    ("/api/estimate", {"model": "llama-3.1-8b", "method": "lora", "quant": "int8"}, "quant"),
    ("/api/estimate", {"model": "llama-3.1-8b", "seq-len": "abc"}, "whole number"),
    ("/api/estimate", {"model": "llama-3.1-8b", "seq-len": "nan"}, "seq-len"),
    ("/api/estimate", {"model": "llama-3.1-8b", "batch": "0"}, "must be positive"),
    ("/api/estimate", {"model": "llama-3.1-8b", "batch": "-2"}, "must be positive"),
    ("/api/estimate", {"model": "llama-3.1-8b", "rank": "9000"}, "larger than the hidden size"),
    ("/api/estimate", {"model": "llama-3.1-8b", "seq-len": "1M"}, "max_position_embeddings"),
    ("/api/estimate", {"model": "llama-3.1-8b", "precision": "fp6"}, "unknown precision"),
    ("/api/estimate", {"model": "llama-3.1-8b", "gpus": "8", "tp": "3"}, "cannot be split"),
    ("/api/estimate", {"model": "llama-3.1-8b", "gpus": "4", "pp": "4"}, "does not run --pp"),
    ("/api/estimate", {"model": "llama-3.1-8b", "fused-ce": "maybe"}, "is a flag"),
    ("/api/estimate", {"model": "llama-3.1-8b", "batch_size": "2"}, "unknown option"),
    ("/api/estimate", {"model": "llama-3.1-8b", "gpu": "rtx-9090"}, "unknown device"),
    ("/api/estimate", {"model": "llama-3.1-8b", "gpu": "rtx-4090", "gpus": "6"}, "whole machines"),
    ("/api/estimate", {"model": "llama-3.1-8b", "from": "axolotl.yaml"}, "reads a file on the server"),
    ("/api/estimate", {"model": "llama-3.1-8b", "hub": "1"}, "tuneplan serve --hub"),
    ("/api/estimate", {"model": "llama-3.1-8b", "json": "1"}, "JSON already"),
    ("/api/estimate", {"model": "llama-3.1-8b", "help": "1"}, "unknown option"),
    ("/api/fit", {"model": "llama-3.1-8b"}, "needs gpu=DEVICE"),
    ("/api/plan", {"model": "llama-3.1-8b", "gpus": "2"}, "plan chooses the GPU count"),
    ("/api/plan", {"model": "llama-3.1-8b", "epochs": "2"}, "epochs"),
    ("/api/plan", {"model": "llama-3.1-8b", "rank-by": "speed"}, "invalid choice"),
    ("/api/plan", {"model": "llama-3.1-8b", "export": "/tmp/x"}, "writes files on the server"),
    ("/api/plan", {"model": "llama-3.1-8b", "utilisation": "inf"}, "utilisation"),
    ("/api/matrix", {"method": "lora"}, "--methods"),
    ("/api/matrix", {"methods": "full", "rank": "8"}, "rank"),
    ("/api/matrix", {"methods": "lora,sft"}, "unknown method"),
    ("/api/matrix", {"csv": "fit.csv"}, "writes a file on the server"),
    ("/api/matrix", {"models": "llama-3.2-1b,/etc/passwd"}, "reads no paths"),
    ("/api/export", {"model": "llama-3.1-8b"}, "--to"),
    ("/api/export", {"model": "llama-3.1-8b", "to": "megatron"}, "invalid choice"),
    ("/api/export", {"model": "llama-3.1-8b", "to": "trl", "output": "/tmp/x.yaml"}, "writes a file"),
    ("/api/devices", {"category": "phones"}, "phones"),
    ("/api/models", {"x": "1"}, "takes no options"),
])
def test_bad_input_is_a_one_line_400(client, path, query, msg):
    assert msg in error_of(client.get(path, params=query))


def test_an_option_given_twice_is_refused(client):
    assert "twice" in error_of(client.get("/api/estimate?model=llama-3.1-8b&batch=1&batch=2"))


@pytest.mark.parametrize("model", ["/etc/passwd", "../../etc/passwd", "..", ".", "~/config.json", "~root",
                                   "C:\\models\\config.json", "a\\b", "config.json", "./config.json",
                                   "models/../../x", "/dev/zero", "a/b/c", "file:///etc/passwd", "x" * 300,
                                   "llama\x00", "meta-llama/.hidden"])
def test_a_model_that_looks_like_a_path_is_refused(client, model):
    for path, key in (("/api/estimate", "model"), ("/api/plan", "model"), ("/api/matrix", "models")):
        err = error_of(client.get(path, params={key: model}))
        assert "paths" in err or "file" in err, err


def test_a_model_naming_an_existing_file_is_refused_without_reading_it(client, tmp_path, monkeypatch):
    folder = tmp_path / "mymodel"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(catalog()["Qwen/Qwen2.5-7B"].config))
    monkeypatch.chdir(tmp_path)
    assert main(["estimate", "mymodel", "--json"]) == 0  # the CLI reads it
    assert "names a file or folder on the server" in error_of(client.get("/api/estimate", params={"model": "mymodel"}))
    # a catalog name is a catalog name even where a folder of that name exists
    (tmp_path / "llama-3.2-1b").mkdir()
    assert ok(client.get("/api/estimate", params={"model": "llama-3.2-1b"}))["model"] == "meta-llama/Llama-3.2-1B"


def test_hub_ids_need_hub(client, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_HUB", "1")  # the server's --hub decides, not the environment
    called = []
    monkeypatch.setattr("tuneplan.models.fetch_hub_config", lambda *a, **k: called.append(a) or {})
    err = error_of(client.get("/api/estimate", params={"model": "someone/some-model"}))
    assert "someone/some-model" in err and not called


def test_oversize_body_is_413(client):
    big = b'{"model_type": "llama", "pad": "' + b"x" * (1 << 20) + b'"}'
    assert "at most" in error_of(client.post("/api/estimate", content=big), 413)

    def chunks():  # no Content-Length: refused while reading
        for _ in range(20):
            yield b"x" * 65536

    assert "larger than" in error_of(client.post("/api/estimate", content=chunks()), 413)


@pytest.mark.parametrize("body,msg", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"model_type": "bert", "hidden_size": 768}', "bert"),
    (json.dumps(catalog()["meta-llama/Llama-3.2-1B"].config | {"num_hidden_layers": "16"}).encode(),
     "num_hidden_layers"),
    (b'{"x": NaN}', "NaN"),
    (b"\xff\xfe{\x00}\x00", "UTF-16"),
])
def test_a_bad_upload_is_a_one_line_400(client, body, msg):
    assert msg in error_of(client.post("/api/estimate", content=body))


def test_upload_and_model_together_are_refused(client):
    body = json.dumps(catalog()["Qwen/Qwen2.5-7B"].config)
    assert "not both" in error_of(client.post("/api/estimate", params={"model": "llama-3.1-8b"}, content=body))
    assert "not both" in error_of(client.post("/api/matrix", params={"models": "llama-3.1-8b"}, content=body))


def test_oversize_matrix_is_refused_before_any_work(client, monkeypatch):
    names = ",".join(["llama-3.2-1b"] * 300)  # 300 x 5 x every device > 20,000
    query = {"models": names, "methods": "full,lora,qlora,dora,freeze", "devices": "all"}
    err = error_of(client.get("/api/matrix", params=query))
    assert f"at most {web.MAX_MATRIX_CELLS:,}" in err
    err = error_of(client.get("/api/heatmap", params={"models": ",".join(["llama-3.2-1b"] * 300), "devices": "all"}))
    assert "cells" in err
    # the server computes matrices in worker processes; here, in this one, nothing is computed
    monkeypatch.setattr(web, "fit_matrix", lambda *a, **k: pytest.fail("computed an oversize matrix"))
    with pytest.raises(web.ApiError, match="cells"):
        web.Api().matrix(list(query.items()), None)


def test_errors_are_the_cli_messages(client, capsys):
    for argv, query in ((["estimate", "llama-3.1-8b", "--method", "full", "--rank", "64"],
                         {"model": "llama-3.1-8b", "method": "full", "rank": "64"}),
                        (["estimate", "llama-3.1-8x"], {"model": "llama-3.1-8x"})):
        capsys.readouterr()
        assert main(argv) == 2
        cli = capsys.readouterr().err.strip().removeprefix("tuneplan: error: ")
        assert error_of(client.get("/api/estimate", params=query)) == cli


def test_http_errors_are_json(client):
    assert "no such page" in error_of(client.get("/api/nothing"), 404)
    assert "no such file" in error_of(client.get("/static/nothing.js"), 404)
    for path in ("/static/..%2F..%2Fetc%2Fpasswd", "/static/%2Fetc%2Fpasswd", "/static/../../etc/passwd"):
        assert error_of(client.get(path), 404)
    assert error_of(client.delete("/api/estimate"), 405)
    assert "longer than" in error_of(client.get("/api/estimate?model=" + "x" * 9000), 414)


def test_a_foreign_host_header_is_refused(client):
    r = client.get("/api/models", headers={"host": "evil.example:8000"})
    assert "not this server's" in error_of(r)
    assert client.get("/api/models", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/api/models", headers={"host": "[::1]:8000"}).status_code == 200


def test_unexpected_exception_is_a_one_line_500_and_logged(client, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("secret internals\nline two")

    monkeypatch.setattr(web.estimate_cmd, "estimate_data", boom)
    with caplog.at_level(logging.ERROR, logger="tuneplan.web"):
        err = error_of(client.get("/api/estimate", params={"model": "llama-3.1-8b"}), 500)
    assert "RuntimeError" in err and "secret" not in err
    assert "secret internals" in caplog.text and "Traceback" in caplog.text


def test_page_and_assets_are_served_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "app.css", "favicon.svg"):
        assert f"/static/{name}" in r.text
        assert client.get(f"/static/{name}").status_code == 200


# ---------------------------------------------------------------- offline, and where starlette may be imported

def test_static_assets_are_flat_and_load_nothing_from_the_network():
    static = SRC / "web" / "static"
    assert all(p.is_file() for p in static.iterdir())
    for p in static.iterdir():
        text = p.read_text(errors="replace")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, p.name


def test_starlette_is_imported_only_by_the_web_package():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.split(".")[0] in ("starlette", "uvicorn"):
                    assert rel.parts[0] == "web" or rel == Path("commands/serve.py"), f"{rel} imports {name}"
                if name.startswith("tuneplan.web"):
                    assert rel.parts[0] in ("web", "commands", "cli"), f"the core module {rel} imports {name}"


def test_help_and_the_package_import_no_web_server():
    code = ("import sys; import tuneplan, tuneplan.web, tuneplan.commands.serve; from tuneplan.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'starlette', 'uvicorn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_serve_refuses_bad_ports_in_one_line(capsys):
    import socket

    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", "--port", str(s.getsockname()[1])]) == 2
        err = capsys.readouterr().err
        assert "cannot listen" in err and err.count("\n") == 1
