"""The dashboards as a user sees them, in a real browser (Debian's Chromium, headless, driven
by Playwright): after a finished tiny sweep, the URL `scissorhands ui` prints opens on the
trial runs with the objective columns, and on the shared view's scatter chart of the
objectives; `scissorhands dashboard` renders the sweep's Pareto front. Screenshots go to
$SCISSORHANDS_SCREENSHOTS (default: the test's temporary folder)."""
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import ray

from cluster_helpers import free_port, stop_group, wait_until
from orchestrator.cli import main
from orchestrator.sweep.results import ResultsTable
from tests.spaces import PICK, tiny_space

CHROMIUM = Path("/usr/bin/chromium")  # `make test` installs Debian's chromium where apt-get can
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM}: apt-get install chromium")
# As the machine's probe starts it: a closed network refuses Chromium's background connections.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
NAME = "browse"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_references):
    storage = tmp_path_factory.mktemp("browser") / "runs"
    shutil.copytree(tiny_references, storage / "references")  # content-keyed: nothing trained
    space = storage.parent / "browse.yaml"
    space.write_text(tiny_space(NAME, trials=2, concurrent=1, **PICK))
    ray.shutdown()
    try:
        assert main(["sweep", str(space), "--storage", str(storage), "--no-progress"]) == 0
    finally:
        ray.shutdown()
    return storage, ResultsTable(storage / NAME / "results.parquet").read()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("SCISSORHANDS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def serve(argv: list[str], log: Path, ready_url: str) -> subprocess.Popen:
    """Start a `scissorhands` server command in its own process group; wait until it answers."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *argv], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(ready_url, timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_until(answers, 180, interval=0.5, what=f"scissorhands {argv[0]}")
    except BaseException:
        stop_group(proc)
        raise
    return proc


def points_of_first_plot(page) -> int:
    return page.locator(".js-plotly-plot").first.locator(".scatterlayer .point").count()


def test_the_mlflow_ui_opens_on_the_trial_runs_their_objectives_and_the_scatter(sweep, browser, tmp_path, shots):
    storage, df = sweep
    port = free_port()
    log = tmp_path / "ui.log"
    proc = serve(["ui", NAME, "--storage", str(storage), "--port", str(port)], log, f"http://127.0.0.1:{port}/health")
    try:
        urls = dict(re.findall(r"(runs|charts) +(http://\S+)", log.read_text()))
        assert set(urls) == {"runs", "charts"}, log.read_text()
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(urls["runs"])
        body = page.locator("body")
        # The model-training runs page (not the GenAI overview), the shared view, every trial run
        # and the references, and the objectives' means and intervals as columns.
        for text in ["You're viewing a shared view", "reference: original", "reference: retrain",
                     *df["trial_id"], "gap_UA", "RA_ci95", "RTE_s"]:
            sync_api.expect(body).to_contain_text(text, timeout=90_000)
        assert "/runs" in page.url and "Token Usage" not in body.inner_text()
        page.screenshot(path=str(shots / "mlflow-runs.png"))

        page.goto(urls["charts"])
        for text in ["Sweep browse", "gap_UA vs. RA", "Parallel Coordinates"]:
            sync_api.expect(body).to_contain_text(text, timeout=90_000)
        # The scatter, first in the sweep's section: a point per trial and per reference.
        wait_until(lambda: points_of_first_plot(page) == len(df) + 2, 60, what="the scatter's points")
        page.screenshot(path=str(shots / "mlflow-charts.png"))
    finally:
        stop_group(proc)


def test_optuna_dashboard_renders_the_sweeps_pareto_front(sweep, browser, tmp_path, shots):
    storage, df = sweep
    port = free_port()
    proc = serve(["dashboard", NAME, "--storage", str(storage), "--port", str(port)], tmp_path / "dashboard.log",
                 f"http://127.0.0.1:{port}/api/studies")
    try:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/dashboard/studies/1")
        body = page.locator("body")
        for text in [NAME, "Pareto Front", "gap_UA", "RA"]:
            sync_api.expect(body).to_contain_text(text, timeout=90_000)
        completed = int((df["status"] == "ok").sum())
        wait_until(lambda: points_of_first_plot(page) == completed, 60, what="the Pareto front's points")
        page.screenshot(path=str(shots / "optuna-dashboard.png"))
    finally:
        stop_group(proc)
