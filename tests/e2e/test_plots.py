"""`dvc plots show` draws every chart with no network: its page, rendered in headless Chromium.

A scratch copy of the pipeline is reproduced on tiny data, the offline page is made
(scripts/plots_page.py, from the npm packages `make test` installs), and the page
`dvc plots show` writes is opened in Chromium (Debian's package), driven over the
DevTools protocol on a pipe (no port, no extra package). Every chart must have drawn its
marks as SVG, every picture must have loaded, and nothing may have asked the network
for anything or logged an error.

Without chromium or the npm packages: skipped, except under CI (CI=true), where it fails
(tests/helpers/tools.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import ROOT
from helpers.data import TINY_PARAMS, write_raw
from helpers.repos import make_repo
from helpers.tools import CHROMIUM_HINT, NPM_HINT, need, need_tool

pytestmark = pytest.mark.e2e

NODE_MODULES = ROOT / ".venv" / "node" / "node_modules"
# The flags a closed network needs: without the background-networking ones Chromium's own
# connections (updates, sync, field trials) fail and log errors.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,2400")
# What each of dvc.yaml's plots draws (DVC makes the div ids from the plots' names).
CHARTS = {
    "Loss__plain_cross-entropy_": "line",
    "Accuracy": "line",
    "Per-class_F1__test_set__worst_first_": "symbol",
    "metrics_confusion_csv": "rect",
}
PICTURES = {"metrics_misclassified_png"}

# Run in the page: whether it has loaded (pictures included), and what each plot's div holds.
INSPECT = """(() => ({ready: document.readyState, divs: [...document.querySelectorAll("body > div[id]")].map(div => {
    const svg = div.querySelector("svg");
    const marks = kind => [...div.querySelectorAll(`g.mark-${kind}.role-mark`)].map(
        group => [...group.querySelectorAll("path, text")].filter(e => e.getAttribute("d") || e.textContent).length);
    const axisTitles = [...div.querySelectorAll("g.role-axis-title text")].map(t => t.textContent);
    return {id: div.id, embedded: div.classList.contains("vega-embed"), svg: !!svg,
            canvas: !!div.querySelector("canvas"), line: marks("line"), symbol: marks("symbol"),
            rect: marks("rect"), text: marks("text"), axisTitles,
            images: [...div.querySelectorAll("img")].map(img => img.complete ? img.naturalWidth : -1)};
})}))()"""


class Chromium:
    """Headless Chromium driven over the DevTools protocol on fds 3 and 4 (--remote-debugging-pipe).

    Messages are JSON, each ended by a NUL byte. `events` collects every event of the
    attached page; `call` sends a command and waits for its answer.
    """

    def __init__(self, executable: str, profile: Path):
        to_child, self._to_browser = os.pipe()
        self._from_browser, from_child = os.pipe()
        # Above 4, so the dup2s below can't overwrite one another.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
        for fd in (to_child, from_child):
            os.close(fd)

        def child_fds():
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4, *ends), preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: PLW1509 - two os.dup2 calls, no lock taken
        for fd in ends:
            os.close(fd)
        self._next_id, self.session = 0, None
        self._answers: dict[int, queue.Queue] = {}
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answers.setdefault(message["id"], queue.Queue()).put(message)
                    elif message.get("sessionId") == self.session:
                        self.events.append(message)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        answers = self._answers.setdefault(self._next_id, queue.Queue())
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            answer = answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"Chromium did not answer {method} within {timeout} s") from None
        assert "error" not in answer, (method, answer["error"])
        return answer["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def close(self) -> str:
        os.close(self._to_browser)  # Chromium exits when its end of the pipe closes
        try:
            _, stderr = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, stderr = self.proc.communicate()
        return stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """`dvc plots show`'s page of a pipeline reproduced on tiny data, with the offline template."""
    need(all((NODE_MODULES / name / "package.json").is_file() for name in ("vega", "vega-lite", "vega-embed")),
         f"vega, vega-lite and vega-embed from npm in {NODE_MODULES}", NPM_HINT)
    root = tmp_path_factory.mktemp("plots")
    # A learning rate too small to learn much in two epochs: mistakes for the confusion matrix to colour.
    params = {**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "lr": 0.001}}
    repo = make_repo(root / "repo", write_raw(root / "raw"), params)
    shutil.copytree(ROOT / ".dvc" / "plots", repo.path / ".dvc" / "plots")  # dvc.yaml's own templates
    repo.dvc("repro", "evaluate")
    made = repo.run(sys.executable, str(ROOT / "scripts" / "plots_page.py"), str(NODE_MODULES))
    assert "wrote .dvc/plots-page.html" in made.stdout, made.stdout + made.stderr
    shown = repo.dvc("plots", "show")
    page = repo.path / "dvc_plots" / "index.html"
    assert page.is_file(), shown.stdout + shown.stderr
    return page


def test_the_plots_page_holds_no_address_to_fetch(plots_page):
    text = plots_page.read_text()
    assert "cdn.jsdelivr.net" not in text and "<script src=" not in text and "sourceMappingURL" not in text
    assert text.count("vegaEmbed('#") == len(CHARTS)


def test_every_chart_draws_offline_in_chromium(plots_page, tmp_path):
    # Debian's package, or the Chrome that GitHub's Ubuntu runners come with.
    executable = need_tool("chromium", CHROMIUM_HINT, "chromium-browser", "google-chrome")
    browser = Chromium(executable, tmp_path / "profile")
    try:
        browser.open(plots_page.as_uri())
        deadline = time.monotonic() + 60
        while True:
            page = browser.evaluate(INSPECT) or {"ready": None, "divs": []}
            divs = page["divs"]
            # vega-embed draws asynchronously, after the page's load event.
            if page["ready"] == "complete" and {d["id"] for d in divs if d["svg"]} >= set(CHARTS):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        events = list(browser.events)
    finally:
        log = browser.close()
    by_id = {d["id"]: d for d in divs}
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    errors = [e["params"] for e in events if e["method"] == "Runtime.exceptionThrown"
              or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]

    assert [url for url in requests if not url.startswith(("file:", "data:", "about:"))] == [], requests
    assert errors == [], errors
    assert set(by_id) == set(CHARTS) | PICTURES, (by_id, log[-2000:])
    for chart, kind in CHARTS.items():
        div = by_id[chart]
        assert div["embedded"] and div["svg"] and not div["canvas"], div
        assert div[kind] and div[kind][0] > 0, (chart, div)
    # Train and validation lines (DVC's template adds its smoothed copies), on an x axis of epochs.
    for chart in ("Loss__plain_cross-entropy_", "Accuracy"):
        assert sum(by_id[chart]["line"]) >= 2, by_id[chart]
        assert "epoch" in by_id[chart]["axisTitles"], by_id[chart]
    # A dot and its value for each of the ten classes.
    f1 = by_id["Per-class_F1__test_set__worst_first_"]
    assert f1["symbol"] == [10] and f1["text"] == [10], f1
    # Every cell of the 10 x 10 matrix, then the mistakes on their own colour scale, each
    # mistake's count written in, and the ten right answers' counts.
    confusion = by_id["metrics_confusion_csv"]
    mistakes = confusion["rect"][1]
    assert confusion["rect"] == [100, mistakes] and mistakes > 0 and confusion["text"] == [mistakes, 10], confusion
    assert {"predicted class", "true class"} <= set(confusion["axisTitles"]), confusion
    picture = by_id["metrics_misclassified_png"]
    assert picture["images"] and all(width > 0 for width in picture["images"]), picture
