"""What the browser tests do to the dashboard: sign in, wait, check accessibility with axe-core, take screenshots."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import AXE

log = logging.getLogger(__name__)


def wait(driver: WebDriver, until: Callable[[WebDriver], Any], timeout: float = 30, what: str = "") -> Any:  # noqa: ANN401
    """Poll until(driver) for a truthy value (StaleElement and friends count as not yet)."""
    from selenium.common.exceptions import WebDriverException

    def check(d: WebDriver) -> Any:  # noqa: ANN401
        try:
            return until(d)
        except WebDriverException:
            return False

    from selenium.common.exceptions import TimeoutException

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check)
    except TimeoutException:
        raise TimeoutException(f"{what}; the page's console said: {driver.get_log('browser')[-8:]}") from None


def css(driver: WebDriver, selector: str, timeout: float = 30) -> WebElement:
    """The first visible element matching selector, once there is one."""
    return wait(driver, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()),
                                       None), timeout, f"no visible {selector}")


def heading(driver: WebDriver, text: str, timeout: float = 30) -> WebElement:
    """The page's h1, once it contains text."""
    return wait(driver, lambda d: next((h for h in d.find_elements(By.TAG_NAME, "h1")
                                        if h.is_displayed() and text in h.text), None), timeout, f"no h1 with {text!r}")


def sign_in(driver: WebDriver, url: str, token: str) -> None:
    """Open the dashboard and sign in with token."""
    driver.get(url + "/")
    css(driver, "#token").send_keys(token)
    css(driver, "form button[type=submit]").click()
    heading(driver, "Datasets")


def shot(driver: WebDriver, folder: Path, name: str) -> Path:
    """Save a full-width screenshot as folder/name.png."""
    path = folder / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(max(int(height) + 120, 600), 3000))
    driver.save_screenshot(str(path))
    return path


def serious_violations(driver: WebDriver) -> list[str]:
    """axe-core (vendored) on the current page: every violation of impact serious or critical, described."""
    if not driver.execute_script("return !!window.axe"):
        driver.execute_script(AXE.read_text())
    violations = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then((r) => done(r.violations), (e) => done([{id: 'axe-error', "
        "impact: 'critical', help: String(e), nodes: []}]));")
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in violations if v["impact"] in ("serious", "critical")]


def console_errors(driver: WebDriver) -> list[str]:
    """Errors the page logged to the console (a failed script, an uncaught exception)."""
    # a refused token (401) or a missing thumbnail (404) is an answer the page handles, not a page error
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
