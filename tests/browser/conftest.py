"""Browser tests of the dashboard: Debian's headless Chromium, driven by Selenium, on a real `graft api` and worker.

Without /usr/bin/chromium and /usr/bin/chromedriver these tests skip, saying why; with GRAFT_REQUIRE_BROWSER=1
(set by .ci/run) they fail instead. Screenshots go to var/test-output/screenshots/ (GRAFT_TEST_OUTPUT overrides
var/test-output).
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.helpers import HYMENOPTERA, ROOT, api_process, private_env, running_worker

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
OUTPUT = Path(os.environ.get("GRAFT_TEST_OUTPUT") or ROOT / "var" / "test-output")
SUBSET = {"train": 50, "val": 10}  # images per class and split of hymenoptera's zip: ~2 minutes for every test here
# (50: from 99 images the `unknown` bar is a conformal rank; below it extrapolates a tail, and a 96 px model
# trained on 40 images then let every drawn image through)


def _missing_browser() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        return f"no headless browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
    if not HYMENOPTERA.is_dir():
        return f"no test images at {HYMENOPTERA}"
    return None


@pytest.fixture(scope="session")
def browser_available() -> None:
    """Skip (or, with GRAFT_REQUIRE_BROWSER=1, fail) when Chromium, its driver or the images are missing."""
    reason = _missing_browser()
    if reason and os.environ.get("GRAFT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GRAFT_REQUIRE_BROWSER=1 but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder each browser test saves its screenshots in."""
    folder = OUTPUT / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def dashboard(browser_available: None, service_env: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `graft api` process and one real worker, on a database, queue and artifacts folder of their own."""
    base = tmp_path_factory.mktemp("dashboard")
    env = private_env(service_env, base, "graft-browser", GRAFT_ARTIFACTS_DIR=str(base / "artifacts"))
    with running_worker(env, "browser", base / "worker.log"):
        with api_process(env, log=base / "api.log") as (url, _proc):
            yield {"url": url, "env": env, "base": base}


@pytest.fixture(scope="module")
def hymenoptera_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip of a subset of hymenoptera (SUBSET images per class and split), built at test time."""
    path = tmp_path_factory.mktemp("zips") / "hymenoptera.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for split, n in SUBSET.items():
            for cls in ("ants", "bees"):
                for image in sorted((HYMENOPTERA / split / cls).iterdir())[:n]:
                    archive.write(image, f"hymenoptera/{split}/{cls}/{image.name}")
    return path


@pytest.fixture()
def browser(browser_available: None, tmp_path: Path, screenshots: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A headless Chromium (1280x1000) that downloads into tmp_path/downloads; its last page is saved as a
    screenshot, last-<test>.png (what a failing test saw)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--lang=en-US"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        try:
            driver.save_screenshot(str(screenshots / f"last-{request.node.name}.png"))
        finally:
            driver.quit()
        shutil.rmtree(downloads, ignore_errors=True)
