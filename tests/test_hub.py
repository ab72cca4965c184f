"""Hub loading: off by default, works against a local stand-in server, caches, clean errors."""

import http.server
import json
import threading
from functools import partial

import pytest

from tuneplan.cli import main
from tuneplan.errors import TuneplanError
from tuneplan.models import HUB_ENV, catalog, param_counts, resolve_model


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A local stand-in for the Hub serving <repo>/resolve/main/config.json."""
    root = tmp_path / "hub"
    repo = root / "acme" / "tiny-qwen" / "resolve" / "main"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps(catalog()["Qwen/Qwen2.5-0.5B"].config))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(HUB_ENV, raising=False)
    yield server
    server.shutdown()


def test_hub_is_off_by_default(hub):
    with pytest.raises(TuneplanError, match="--hub"):
        resolve_model("acme/tiny-qwen")


def test_hub_fetch_and_cache(hub, monkeypatch, tmp_path):
    monkeypatch.setenv(HUB_ENV, "1")
    spec = resolve_model("acme/tiny-qwen")
    assert param_counts(spec).total == 494_032_768
    assert (tmp_path / "cache" / "tuneplan" / "hub" / "acme" / "tiny-qwen" / "main" / "config.json").exists()
    hub.shutdown()  # offline now: the cached copy answers
    assert param_counts(resolve_model("acme/tiny-qwen")).total == 494_032_768


def test_hub_missing_repo_is_one_line_error(hub, monkeypatch):
    monkeypatch.setenv(HUB_ENV, "1")
    with pytest.raises(TuneplanError, match="404"):
        resolve_model("acme/nothing-here")


def test_cli_hub_flag(hub, capsys, monkeypatch):
    code = main(["estimate", "acme/tiny-qwen", "--hub", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["total_params"] == 494_032_768
    monkeypatch.delenv(HUB_ENV, raising=False)
