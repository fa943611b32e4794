"""The dashboard in headless Chromium, end to end, on a real `graft api` process and a real worker.

One flow (test_end_to_end): sign in, upload a zip of hymenoptera (a subset: conftest.SUBSET), read its report,
train, watch the curves grow, open a confusion-matrix cell and see its images, try an image, batch predict an
uploaded zip and download its CSV. axe-core checks every page it visits. Screenshots: conftest.OUTPUT/screenshots.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from graft.client import Client
from graft.shared.accuracy import describe
from tests.browser.pages import console_errors, css, heading, serious_violations, shot, sign_in, wait
from tests.helpers import HYMENOPTERA, TOKEN

TRAIN = {"epochs": "3", "mode": "full", "time_budget_s": "120"}  # small: the flow must stay near a minute


def _accessible(driver: WebDriver, page: str) -> None:
    problems = serious_violations(driver)
    assert not problems, f"{page}: axe-core found serious accessibility violations: {problems}"


def test_a_wrong_token_is_refused_and_sign_out_forgets_the_token(dashboard: dict[str, Any], browser: WebDriver,
                                                                   screenshots: Path) -> None:
    browser.get(dashboard["url"] + "/")
    heading(browser, "Sign in")
    _accessible(browser, "sign in")
    # users sign in with their own token: the page says where one comes from, not the server's admin variable
    assert "graft tokens create" in css(browser, "#token-help").text
    assert "GRAFT_API_TOKENS" not in css(browser, "main").text
    css(browser, "#token").send_keys("not-the-token" + Keys.ENTER)  # the keyboard alone submits
    wait(browser, lambda d: "refused" in css(d, "form [role=alert]").text, what="no refusal shown")
    assert browser.execute_script("return sessionStorage.getItem('graft.token')") is None
    shot(browser, screenshots, "sign-in-refused")
    css(browser, "#token").clear()
    sign_in(browser, dashboard["url"], TOKEN)
    assert browser.execute_script("return sessionStorage.getItem('graft.token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0  # never kept beyond the tab
    css(browser, "nav button").click()  # Sign out
    heading(browser, "Sign in")
    assert browser.execute_script("return sessionStorage.getItem('graft.token')") is None
    assert not console_errors(browser)


def test_the_docs_page_runs_under_the_content_security_policy(dashboard: dict[str, Any], browser: WebDriver) -> None:
    # Swagger UI starts from a file (no inline script), under the policy every response carries: no console error
    browser.get(dashboard["url"] + "/docs")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-tag"), what="Swagger UI listed no operations")
    assert "Graft" in css(browser, ".info .title").text
    assert not console_errors(browser)


def test_a_phone_width_and_the_keyboard_reach_every_page(dashboard: dict[str, Any], browser: WebDriver,
                                                         screenshots: Path) -> None:
    browser.set_window_size(390, 844)
    sign_in(browser, dashboard["url"], TOKEN)
    for name, title in (("Train", "Train a model"), ("Jobs", "Jobs"), ("Models", "Models"),
                        ("Batch predict", "Batch predict"), ("Datasets", "Datasets")):
        # keyboard only: each page focuses its heading; Shift+Tab walks back into the menu, Enter follows a link
        for _ in range(12):
            browser.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
            if browser.switch_to.active_element.text == name:
                break
        assert browser.switch_to.active_element.text == name, f"Shift+Tab never reached {name}"
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        heading(browser, title)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), \
            f"{title}: the page scrolls sideways at phone width"
        _accessible(browser, f"{title} at phone width")
    shot(browser, screenshots, "phone-datasets")
    browser.find_element(By.LINK_TEXT, "Train").send_keys(Keys.ENTER)
    heading(browser, "Train a model")
    epochs = css(browser, "#f-epochs")
    epochs.clear()
    epochs.send_keys("0" + Keys.ENTER)  # the API refuses it: its problem names the field, shown beside it
    message = wait(browser, lambda d: d.find_element(By.XPATH, "//*[@id='f-epochs']/following-sibling::p[@class='error']"
                                                   ).text, what="no error beside the field")
    assert ">= 1" in message
    shot(browser, screenshots, "phone-train-refused")
    assert not console_errors(browser)


def _upload_dataset(driver: WebDriver, archive: Path, screenshots: Path) -> str:
    css(driver, "#dataset-archive").send_keys(str(archive))
    heading(driver, "Dataset hymenoptera", timeout=60)
    wait(driver, lambda d: "ready" in css(d, "main section p .badge").text, 90, "dataset never became ready")
    rows = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.class-row"), what="no class rows")
    assert [r.find_element(By.TAG_NAME, "th").text for r in rows] == ["ants", "bees"]
    wait(driver, lambda d: all((i.get_attribute("src") or "").startswith("blob:")  # none yet: still fetching
                               for i in d.find_elements(By.CSS_SELECTOR, "tr.class-row img"))
         and len(d.find_elements(By.CSS_SELECTOR, "tr.class-row img")) >= 2, what="class thumbnails not loaded")
    _accessible(driver, "dataset report")
    shot(driver, screenshots, "dataset-report")
    return driver.current_url.rsplit("/", 1)[-1]


def _train(driver: WebDriver, dataset_id: str, screenshots: Path) -> str:
    css(driver, "a.button[href^='#/train']").click()
    heading(driver, "Train a model")
    wait(driver, lambda d: Select(css(d, "#f-dataset_id")).first_selected_option.get_attribute("value") == dataset_id)
    # the form starts from the API's own default, as the CLI and the client do; Lite0 here only to be quick
    assert Select(css(driver, "#f-backbone")).first_selected_option.get_attribute("value") == "auto"
    Select(css(driver, "#f-backbone")).select_by_value("efficientnet_lite0")
    Select(css(driver, "#f-mode")).select_by_value(TRAIN["mode"])
    for name in ("epochs", "time_budget_s"):
        field = css(driver, f"#f-{name}")
        field.clear()
        field.send_keys(TRAIN[name])
    css(driver, "details summary").click()  # the advanced options are folded away until asked for
    # one head epoch, then two full ones (seconds each, where a head-conv fine-tune epoch now takes a tenth of a
    # second and the curve jumped from 0 to 3 points between two polls), on small images
    for name, value in (("views", "1"), ("image_size", "96"), ("freeze_epochs", "1"), ("patience", "5")):
        field = css(driver, f"#f-{name}")
        field.clear()
        field.send_keys(value)
    _accessible(driver, "train form")
    shot(driver, screenshots, "train-form")
    css(driver, "form button[type=submit]").click()
    heading(driver, "Job")
    job_id = driver.current_url.rsplit("/", 1)[-1]
    wait(driver, lambda d: css(d, "code.full-id").text == job_id, what="the job's whole id is not shown")
    # the curves grow: record the epochs the page shows at each poll until the job ends
    seen: list[int] = []
    said: set[tuple[str, str]] = set()  # (phase, progress text) pairs the page showed
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        text = css(driver, "#curve-count").text
        seen.append(int(text.split()[0]))
        said.add(tuple(driver.execute_script(  # both in one script: the page cannot update between the two reads
            "return [document.querySelector('label[for=job-progress] span').textContent,"
            "        document.querySelector('.progress-line > span').textContent];")))
        if "succeeded" in css(driver, "main section > p .badge").text:
            break
        time.sleep(0.3)
    assert "succeeded" in css(driver, "main section > p .badge").text, css(driver, "main section").text
    # before the first epoch the page counts images, as the CLI does, never "epoch 0/?"
    preparing = {"loading": "reading images ", "caching": "computing features "}
    assert all(text.startswith(preparing[phase]) for phase, text in said if phase in preparing), said
    shown = driver.execute_script(
        "const page = Alpine.$data(document.querySelector('#job-progress'));"
        "return [page.progressText({progress: {phase: 'caching', done: 3, total: 40}}),"
        "        page.progressText({progress: {phase: 'done', epoch: 9, epochs: 10, fraction: 1}})];")
    assert shown == ["computing features 3/40", "done · 9 of 10 epochs (stopped early)"], shown
    points = driver.execute_script("return Chart.getChart('loss-chart').data.labels.length")
    assert points == seen[-1] >= 2, (points, seen)
    assert any(0 < n < seen[-1] for n in seen), f"the curve was never seen part-drawn: {sorted(set(seen))}"
    _accessible(driver, "job page")
    shot(driver, screenshots, "job-page")
    return job_id


def noise_image(path: Path) -> Path:
    """Seeded RGB noise: nothing like a training photo."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
    return path


def unlike_images(folder: Path) -> list[Path]:
    """Images nothing like an ant or a bee: noise, a checkerboard, stripes, flat colours."""
    folder.mkdir(parents=True, exist_ok=True)
    board = (np.indices((224, 224)).sum(0) // 28 % 2 * 255).astype(np.uint8)
    stripes = np.zeros((224, 224, 3), np.uint8)
    stripes[::16] = (0, 0, 255)
    drawn = {"checkerboard.png": np.stack([board] * 3, -1), "stripes.png": stripes,
             "magenta.png": np.full((224, 224, 3), (255, 0, 255), np.uint8),
             "black.png": np.zeros((224, 224, 3), np.uint8), "white.png": np.full((224, 224, 3), 255, np.uint8)}
    paths = [noise_image(folder / "noise.png")]
    for name, pixels in drawn.items():
        Image.fromarray(pixels).save(folder / name)
        paths.append(folder / name)
    return paths


def first_unknown(client: Client, model_id: str, candidates: list[Path]) -> Path:
    """The first candidate the API answers `unknown` for: the model's threshold promises at most 1 % of familiar
    photos flagged, so with a small training set it may let one kind of odd image through, not all of them."""
    for path in candidates:
        if _answer(client, model_id, path)["label"] == "unknown":
            return path
    raise AssertionError(f"the model flags none of {[p.name for p in candidates]}")


def _answer(client: Client, model_id: str, image: Path) -> dict[str, Any]:
    """What the API answers for one image (the synchronous endpoint, or its job's results)."""
    answer = client.predict_now(model_id, [image])
    if "items" not in answer:  # 202: no worker answered in time, the page waits for the job the same way
        answer = {"items": list(client.results(client.wait(answer["id"])["id"]))}
    return answer["items"][0]


def _try(driver: WebDriver, client: Client, model_id: str, image: Path) -> str:
    """Try one image on the model page; the verdict it shows must be the API's answer for that file."""
    css(driver, "#try-files").send_keys(str(image))
    answer = _answer(client, model_id, image)
    shown = f"unknown: {answer['reason']}" if answer["label"] == "unknown" else answer["label"]

    def verdict(d: WebDriver) -> str | None:  # the input keeps earlier choices: read this image's own entry
        for entry in d.find_elements(By.CSS_SELECTOR, ".try"):
            if entry.find_element(By.TAG_NAME, "strong").text == image.name:
                return entry.find_element(By.CLASS_NAME, "verdict").text
        return None

    wait(driver, lambda d: verdict(d) == f"Answer: {shown}", 60, f"the page does not say the API's answer {shown!r}")
    return answer["label"]


def _use_snippets(driver: WebDriver, client: Client, model_id: str, folder: Path) -> None:
    """The "use this model" curl and Python snippets, run as the page shows them, answer what the API answers."""
    folder.mkdir()
    photo = folder / "photo.jpg"
    shutil.copy(sorted((HYMENOPTERA / "val" / "ants").iterdir())[0], photo)
    expected = _answer(client, model_id, photo)["label"]
    env = {**os.environ, "GRAFT_TOKEN": TOKEN}
    curl = subprocess.run(["bash", "-c", css(driver, "#snippet-curl").text], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert json.loads(curl.stdout)["items"][0]["label"] == expected, curl.stdout
    python = subprocess.run([sys.executable, "-c", css(driver, "#snippet-python").text], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    assert python.stdout.strip() == expected, python.stdout + python.stderr
    assert f"graft predict {model_id} " in css(driver, "#snippet-cli").text
    assert f"graft models download {model_id} --format onnx" in css(driver, "#snippet-onnx").text


def _model(driver: WebDriver, screenshots: Path, api_url: str, tmp_path: Path, dataset_id: str) -> str:
    css(driver, "a.button[href^='#/models/']").click()
    heading(driver, "Model hymenoptera · efficientnet_lite0")  # its default name: the dataset's and the backbone
    model_id = driver.current_url.rsplit("/", 1)[-1]
    assert css(driver, "#model-dataset").get_attribute("href").split("#/datasets/")[1] == dataset_id
    wait(driver, lambda d: css(d, "code.full-id").text == model_id, what="the model's whole id is not shown")
    cells = wait(driver, lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button.cell") if b.is_enabled()])
    off_diagonal = [b for b in cells if b.find_element(By.XPATH, "..").get_attribute("class") == "wrong"]
    cell = (off_diagonal or cells)[0]
    count = int(cell.text)
    cell.send_keys(Keys.ENTER)  # keyboard: a cell is a button
    wait(driver, lambda d: d.switch_to.active_element.get_attribute("id") == "cell-heading", what="focus not moved")
    figures = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".gallery figure"))
    assert len(figures) == count
    wait(driver, lambda d: all((i.get_attribute("src") or "").startswith("blob:") for i in d.find_elements(By.CSS_SELECTOR, ".gallery img")),
         what="validation thumbnails not loaded")
    caption = figures[0].find_element(By.TAG_NAME, "figcaption").text
    assert "true:" in caption and "predicted:" in caption and "confidence:" in caption
    # one accuracy: the model page says what the API says the model's accuracy is, worded as the CLI words it
    client = Client(api_url, TOKEN)
    model = client.model(model_id)
    assert css(driver, "strong.accuracy").text == describe(model["accuracy"]), model["accuracy"]
    assert "kept the" in css(driver, "strong.accuracy").text
    _use_snippets(driver, client, model_id, tmp_path / "use")
    # try an image: the API's verdict, then the synchronous predict endpoint's top-k, as bars
    assert _try(driver, client, model_id, sorted((HYMENOPTERA / "val" / "bees").iterdir())[-1]) in ("ants", "bees")
    bars = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".try .bar-row"), 60, "no top-k bars")
    assert len(bars) == 2 and {b.find_element(By.CLASS_NAME, "bar-label").text for b in bars} == {"ants", "bees"}
    # an image like nothing it was trained on: the page says `unknown` and why, as the API does
    assert _try(driver, client, model_id, first_unknown(client, model_id, unlike_images(tmp_path / "unlike"))) == "unknown"
    _accessible(driver, "model page")
    shot(driver, screenshots, "model-page")
    return model_id


def _batch_predict(driver: WebDriver, model_id: str, images: Path, screenshots: Path) -> None:
    driver.get(driver.current_url.split("#")[0] + f"#/predict?model={model_id}")
    heading(driver, "Batch predict")
    css(driver, "#predict-folder").send_keys(str(images))
    wait(driver, lambda d: css(d, "#predict-drop p:last-child").text == "7 file(s) chosen", what="folder not read")
    _accessible(driver, "batch predict form")
    css(driver, "form button[type=submit]").click()
    wait(driver, lambda d: "succeeded" in css(d, "main section .badge").text, 90, "batch prediction did not succeed")
    rows = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.results tbody tr"))
    assert len(rows) == 7
    # `unknown` has one filter entry, and its rows say why, with no rejected class's confidence
    options = [o.get_attribute("value") for o in Select(css(driver, "#result-filter")).options]
    assert "unknown" in options and "label:unknown" not in options, options
    Select(css(driver, "#result-filter")).select_by_value("unknown")
    [odd] = driver.find_elements(By.CSS_SELECTOR, "table.results tbody tr")
    cells = [td.text for td in odd.find_elements(By.TAG_NAME, "td")]
    assert cells[1].endswith("/odd.png") and cells[2].startswith("unknown: unlike the training images") and cells[3] == "–"
    Select(css(driver, "#result-filter")).select_by_value("label:bees")
    shown = driver.find_elements(By.CSS_SELECTOR, "table.results tbody tr")
    assert all(r.find_elements(By.TAG_NAME, "td")[2].text == "bees" for r in shown)
    Select(css(driver, "#result-filter")).select_by_value("all")
    wait(driver, lambda d: all((i.get_attribute("src") or "").startswith("blob:") for i in d.find_elements(By.CSS_SELECTOR, "table.results img")),
         what="result thumbnails not loaded")
    _accessible(driver, "batch results")
    shot(driver, screenshots, "batch-results")
    [button] = [b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.text == "Download CSV"]
    button.click()
    csv_file = wait(driver, lambda d: next(iter(d.downloads.glob("predictions-*.csv")), None), 20, "no CSV downloaded")
    with open(csv_file, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 7 and {r["label"] for r in table if not r["path"].endswith("odd.png")} <= {"ants", "bees"}


def _jobs_without_tries(driver: WebDriver, api_url: str) -> None:
    """The Jobs page lists the training and batch jobs, not the model page's tries; its checkbox lists only those."""
    client = Client(api_url, TOKEN)
    tries, jobs = {j["id"] for j in client.jobs(tries=True)}, {j["id"] for j in client.jobs()}
    assert tries and jobs and not tries & jobs

    def shown(d: WebDriver) -> set[str]:
        return {a.get_attribute("aria-label").rsplit(" ", 1)[-1] for a in d.find_elements(By.CSS_SELECTOR, "td a")}

    driver.get(f"{api_url}/#/jobs")
    heading(driver, "Jobs")
    wait(driver, lambda d: shown(d) == jobs, what="the Jobs page does not list the user's jobs alone")
    css(driver, "#tries-only").click()
    wait(driver, lambda d: shown(d) == tries, what="the tries are not listed when asked for")
    css(driver, "#tries-only").click()


@pytest.mark.both_databases
def test_end_to_end(dashboard: dict[str, Any], browser: WebDriver, hymenoptera_zip: Path, screenshots: Path,
                    tmp_path: Path) -> None:
    sign_in(browser, dashboard["url"], TOKEN)
    _accessible(browser, "datasets")
    dataset_id = _upload_dataset(browser, hymenoptera_zip, screenshots)
    _train(browser, dataset_id, screenshots)
    model_id = _model(browser, screenshots, dashboard["url"], tmp_path, dataset_id)
    images = tmp_path / "to-classify"  # a folder: the page zips it (fflate) and uploads the zip
    images.mkdir()
    odd = first_unknown(Client(dashboard["url"], TOKEN), model_id, unlike_images(tmp_path / "unlike"))
    shutil.copy(odd, images / "odd.png")  # an image the API answers `unknown` for
    for cls in ("ants", "bees"):
        for image in sorted((HYMENOPTERA / "val" / cls).iterdir())[-3:]:
            shutil.copy(image, images / f"{cls}-{image.name}")
    _batch_predict(browser, model_id, images, screenshots)
    _jobs_without_tries(browser, dashboard["url"])
    browser.get(f"{dashboard['url']}/#/datasets/{dataset_id}")
    heading(browser, "Dataset hymenoptera")
    [delete] = [b for b in browser.find_elements(By.CSS_SELECTOR, "button.danger") if b.is_displayed()]
    delete.click()
    wait(browser, lambda d: d.switch_to.alert).accept()  # "Delete dataset hymenoptera?"
    heading(browser, "Datasets")
    wait(browser, lambda d: "No datasets yet." in css(d, "main section").text, what="the dataset is still listed")
    assert not console_errors(browser)
