"""The page of `tuneplan serve` in a real headless Chromium (Playwright, Debian's /usr/bin/chromium,
never a downloaded browser): pick a model, method and device, read the verdict and the bar,
change the sequence length and see the figures change, reload from the URL, download a config.

Skipped when Chromium or Playwright is missing, unless TUNEPLAN_REQUIRE_BROWSER=1 (.ci/run sets
it). TUNEPLAN_SCREENSHOT=PATH saves a screenshot of the page (docs/web.png is made this way:
`TUNEPLAN_SCREENSHOT=docs/web.png pytest tests/test_web_browser.py`).
"""

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REQUIRED = os.environ.get("TUNEPLAN_REQUIRE_BROWSER", "") not in ("", "0")


def _need(ok: bool, why: str) -> None:
    if not ok:
        if REQUIRED:
            pytest.fail(f"{why} (TUNEPLAN_REQUIRE_BROWSER=1)")
        pytest.skip(why)


@pytest.fixture(scope="module")
def server():
    try:
        import uvicorn

        from tuneplan.web.app import create_app
    except ImportError as e:
        _need(False, f"the web extra is not installed: {e}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright is not installed (pip install -e '.[browser]')")
    _need(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _updates(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.updates || 0)"))


def _settle(page, after: int, timeout: float = 10.0) -> None:
    """Wait until the page has finished an update started after `after` updates (polled from
    here: Playwright's wait_for_function evaluates strings, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"Number(document.body.dataset.updates || 0) > {after} "
                            "&& document.body.dataset.state === 'ready'"):
        assert time.monotonic() < deadline, "the page did not finish updating"
        page.wait_for_timeout(25)


def _gib(text: str) -> float:
    return float(re.search(r"([\d.]+) GiB", text).group(1))


def test_pick_a_job_read_the_verdict_and_the_bar_change_the_sequence(server, browser):
    t0 = time.monotonic()
    page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    page.goto(server + "/")
    _settle(page, 0)

    # pick a model, a method and a device
    n = _updates(page)
    page.fill("#model", "qwen2.5-7b")
    page.select_option("select[name=method]", "qlora")
    page.select_option("#gpu", "rtx-4090")
    page.fill("#seq-len", "2048")
    page.fill("#batch", "2")
    _settle(page, n)
    assert page.text_content("#model-info").startswith("Qwen/Qwen2.5-7B")
    verdict = page.text_content("#verdict")
    assert verdict in ("fits", "tight", "uncertain", "does not fit")
    assert "rtx-4090" in page.text_content("#fit-title") and "usable" in page.text_content("#fit-title")
    segments = page.locator("#bar rect[data-key]")
    assert segments.count() >= 5
    keys = [segments.nth(i).get_attribute("data-key") for i in range(segments.count())]
    assert "weights" in keys and "activations" in keys and "cuda_context" in keys
    assert page.locator("#usable-line").count() == 1
    bar_text = page.text_content("#bar")
    assert "peak allocated" in bar_text and "peak reserved" in bar_text and "device total" in bar_text
    before = _gib(page.text_content("#peak-total"))
    batch_before = page.text_content("#max-batch")
    assert int(page.text_content("#max-seq").split()[0].replace(",", "")) > 2048
    assert page.locator("#plan tbody tr").count() >= 3
    assert page.locator("#heatmap g.cell").count() >= 3 * 15

    # a longer sequence: more memory, a smaller largest micro-batch, maybe another verdict
    n = _updates(page)
    page.fill("#seq-len", "16384")
    _settle(page, n)
    after = _gib(page.text_content("#peak-total"))
    assert after > before + 1, (before, after)
    assert page.text_content("#max-batch") != batch_before
    if page.text_content("#verdict") == "does not fit":
        assert page.locator("#fix button").count() >= 1
    assert "seq-len=16384" in page.url and "gpu=rtx-4090" in page.url and "model=qwen2.5-7b" in page.url

    # the URL holds the settings: a reload restores them and the same figures
    page.reload()
    _settle(page, 0)
    assert page.input_value("#seq-len") == "16384" and page.input_value("#gpu") == "rtx-4090"
    assert _gib(page.text_content("#peak-total")) == after

    # a config for the stack, downloaded
    with page.expect_download() as dl:
        page.click("#exports button[data-target=trl]")
    assert dl.value.suggested_filename == "trl.yaml"
    text = Path(dl.value.path()).read_text()
    assert "tuneplan export --to trl" in text and "Qwen/Qwen2.5-7B" in text

    # an online task: the peak of each phase and, on a GPU, the step's time by phase
    page.goto(server + "/?model=qwen2.5-7b&method=lora&task=grpo&generation-engine=vllm-colocate&gpu=h100")
    _settle(page, 0)
    note = page.text_content("#memory-note")
    assert "Peak by phase" in note and "generation" in note and "scoring" in note, note
    assert "bound by generation decode" in note and "generated tokens/s" in note, note

    # nothing but this server was asked for anything; no CSP violation or script error
    assert all(u.startswith(server) or u.startswith("blob:") for u in requests), requests
    assert not problems, problems

    shot = os.environ.get("TUNEPLAN_SCREENSHOT")
    if shot:
        page.set_viewport_size({"width": 1280, "height": 1180})
        page.goto(server + "/?model=llama-3.1-8b&method=qlora&seq-len=4096&batch=2&gpu=rtx-4090"
                           "&devices=consumer%2Cworkstation")
        _settle(page, 0)
        page.screenshot(path=shot, full_page=False)
    page.close()
    assert time.monotonic() - t0 < 30


def test_plan_rows_draw_their_time_split(server, browser):
    """Each ranked setup's row has an inline SVG bar of its step's breakdown (time.step.breakdown),
    scaled to the run with a dataset size: segments sum to the run time, the longest row is full
    width, and nothing breaks the page's CSP."""
    import json
    import urllib.parse
    import urllib.request

    query = {"model": "llama-3.1-70b", "method": "full", "devices": "h100", "dataset-tokens": "100M"}
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server + "/?" + urllib.parse.urlencode(query))
    _settle(page, 0)
    with urllib.request.urlopen(server + "/api/plan?" + urllib.parse.urlencode(query)) as r:
        setups = json.loads(r.read())["setups"]
    bars = page.locator("#plan tbody td.time-split svg.timebar")
    assert bars.count() == min(len(setups), 15) >= 2
    heads = [h.strip() for h in page.locator("#plan thead th").all_text_contents()]
    assert heads[heads.index("run") + 1] == "time split"  # next to the run time it splits
    widths = []
    for i in range(bars.count()):
        rects = bars.nth(i).locator("rect")
        terms = [rects.nth(k).get_attribute("data-term") for k in range(rects.count())]
        seconds = [float(rects.nth(k).get_attribute("data-seconds")) for k in range(rects.count())]
        assert terms[0] == "compute" and list(terms) == [t for t, v in setups[i]["time"]["step"]["breakdown"].items()
                                                          if v > 0]
        assert abs(sum(seconds) - setups[i]["time"]["run_s"]) <= 1e-6 * setups[i]["time"]["run_s"]
        assert all(rects.nth(k).locator("title").count() == 1 for k in range(rects.count()))
        widths.append(sum(float(rects.nth(k).get_attribute("width")) for k in range(rects.count())))
    assert abs(max(widths) - 140) < 0.1 and min(widths) < max(widths)
    assert "communication" in page.text_content("#plan-legend")
    assert not problems, problems
    page.close()
