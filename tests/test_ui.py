"""The MLflow UI in a real headless Chromium, from a fresh profile: the printed address, a trial, the champion."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mlflow_server import server
from tests.helpers import REPO, ctrl_c_able

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
OUTPUT = Path(os.environ.get("VAESEARCH_TEST_OUTPUT", REPO / "test-output"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
    ),
]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1600,1000", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for_text(driver, *texts: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element("tag name", "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{texts} not on the page; it shows: {body[:1500]}")


def wait_for(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_optuna_dashboard_shows_the_studys_trials(browser, finished: dict) -> None:
    port = server.free_port()
    cmd = [sys.executable, "-m", "search", "dashboard", "e2e", "--storage-path", str(finished["storage"]),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_able
    )
    try:
        wait_for(lambda: server.port_in_use("127.0.0.1", port), "the dashboard to listen")
        browser.get(f"http://127.0.0.1:{port}/dashboard")
        wait_for_text(browser, "e2e")
        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/1/trials")
        wait_for_text(browser, "Trial 0", "Trial 5", "ray_trial_id")  # every trial, with its Ray trial id
        OUTPUT.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(OUTPUT / "dashboard-trials.png"))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_ui_shows_the_search_its_trials_and_the_champion(
    browser, finished: dict, promoted: dict, mlflow_url: str
) -> None:
    from mlflow.tracking import MlflowClient

    OUTPUT.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("kind") == "search")

    # the address the search printed, at its start and at its end, opened in a fresh profile
    assert len(finished["ui"]) == 2 and finished["ui"][0] == finished["ui"][1], finished["ui"]
    browser.get(finished["ui"][0])
    trained = [r for r in runs if r.data.tags.get("mlflow.parentRunId") and "duplicate_of" not in r.data.tags]
    best = min(trained, key=lambda r: r.data.metrics["best_val_loss"])
    names = [r.info.run_name for r in runs]
    body = wait_for_text(browser, "Runs", "Sort: best_val_loss", *names, f"{len(runs)} matching runs")
    assert "No data available" not in body and "Detect Issues" not in body, body[:1500]  # not the GenAI view
    rows = [e.text for e in browser.find_elements("css selector", "[role='row']") if e.text.strip()]
    first = next(r for r in rows if "train_trial" in r or parent.info.run_name in r)
    assert best.info.run_name in first, rows  # best first; replays (no metrics of their own) and the parent last
    browser.save_screenshot(str(OUTPUT / "ui-first-view.png"))

    # a click through to the best run's page (the URL parameter is not carried): its trial view, not GenAI's
    browser.find_element("link text", best.info.run_name).click()
    body = wait_for_text(browser, best.info.run_name, "Parent run", "end_state", best.data.tags["ray_trial_id"])
    assert "Model metrics" in body and "Artifacts" in body  # the run's own tabs, in either sidebar
    assert f"/runs/{best.info.run_id}" in browser.current_url, browser.current_url
    browser.save_screenshot(str(OUTPUT / "ui-trial.png"))

    # the parent run's description says what the search is and which run is best
    browser.get(f"{mlflow_url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}")
    wait_for_text(browser, "Description", "Best run", best.info.run_id)
    heading = browser.find_element("xpath", "//*[normalize-space(text())='Description']")
    browser.execute_script("arguments[0].scrollIntoView()", heading)
    browser.save_screenshot(str(OUTPUT / "ui-parent.png"))

    # a trained child: its loss and KL curves, its sample grids with a step slider, its system metrics
    last = max(m.step for m in client.get_metric_history(best.info.run_id, "val_loss"))
    page = f"{mlflow_url}/#/experiments/{exp.experiment_id}/runs/{best.info.run_id}"
    browser.get(f"{page}/model-metrics")
    wait_for_text(browser, "val_loss", "val_kl", "best_val_loss", "train_kl")
    browser.save_screenshot(str(OUTPUT / "ui-trial-curves.png"))
    browser.find_element("css selector", "input[placeholder='Search metric charts']").send_keys("samples")
    wait_for_text(browser, "samples", "manifold")
    sliders = wait_for(lambda: browser.find_elements("css selector", "[role='slider']"), "the image step sliders")
    steps = {(s.get_attribute("aria-valuemin"), s.get_attribute("aria-valuemax")) for s in sliders}
    assert steps == {("0", str(last))}, steps  # from the untrained model's grids to the last epoch's
    wait_for(lambda: "No image logged at this step" not in browser.find_element("tag name", "body").text,
             "the grids to show")  # fmt: skip
    browser.save_screenshot(str(OUTPUT / "ui-trial-images.png"))
    browser.get(f"{page}/system-metrics")
    wait_for_text(browser, "System metrics", "cpu_utilization_percentage")
    browser.save_screenshot(str(OUTPUT / "ui-trial-system.png"))

    browser.get(f"{mlflow_url}/#/models/vae-mnist")
    wait_for_text(browser, "vae-mnist", "champion")
    browser.save_screenshot(str(OUTPUT / "ui-model.png"))
    assert (OUTPUT / "ui-model.png").stat().st_size > 10_000
