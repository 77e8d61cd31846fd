"""The dashboard in a real headless Chromium: a compensated run, its rollbacks, and a retry.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped with
that reason where they are missing. Selenium drives the system chromedriver given by path, so
Selenium Manager never looks for (or downloads) a driver or a browser.
"""

from __future__ import annotations

import logging
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import FAST_RETRY, REDIS_URL
from dashboard_server import serve
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._dashboard.app import DashboardOptions
from plait.workflows import StepContext, Workflow, WorkflowConsumer, WorkflowStepError

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.anyio,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="chromium and chromium-driver are not installed (apt-get install -y chromium "
        "chromium-driver; .ci/run does it)",
    ),
]

TOKEN = "browser-token"
STATUS = "var cell = document.querySelector('#live table td span'); return cell && cell.textContent"
"""The run's status as the page shows it (read in one script: the live part may be replaced)."""


class Order(BaseModel):
    order_id: str


order_saga = Workflow("dash-browser", input=Order).step("reserve").step("hold").step("charge")


def consumer(declines: set[str]) -> WorkflowConsumer[Order, Any]:
    """Reserves and holds (both undone by rollbacks), then charges unless declined."""
    orders: WorkflowConsumer[Order, Any] = WorkflowConsumer(order_saga)
    for step in ("reserve", "hold"):
        orders.step(step)(lambda ctx: {"ok": True})
        orders.rollback(step)(lambda ctx: None)

    @orders.step("charge")
    def charge(ctx: StepContext[Order]) -> dict[str, str]:
        if ctx.input.order_id in declines:
            raise ValueError("card declined")
        return {"charge": "ch_1"}

    return orders


@pytest.fixture
async def workflows(prefix: str) -> AsyncIterator[RedisWorkflowProvider]:
    provider = RedisWorkflowProvider.from_url(
        REDIS_URL, prefix=prefix, retry=FAST_RETRY, shutdown_timeout=timedelta(seconds=2)
    )
    async with provider:
        yield provider


def browse(base: str, run_id: str, shots: Path) -> dict[str, Any]:
    """Open the run, read its rollbacks, press retry with the token, wait for COMPLETED."""
    from selenium import webdriver  # noqa: PLC0415 (a dev dependency; the module may skip)
    from selenium.common.exceptions import TimeoutException  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--user-data-dir={shots / 'profile'}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.get(f"{base}/runs/{urllib.parse.quote(run_id)}")
        status_before = driver.execute_script(STATUS)
        rollbacks = driver.execute_script(
            "return Array.from(document.querySelectorAll('#rollbacks tr td:first-child'))"
            ".map(cell => cell.textContent)"
        )
        driver.save_screenshot(str(shots / "compensated.png"))
        retry = driver.find_element(By.CSS_SELECTOR, 'form[action$="/retry"]')
        retry.find_element(By.NAME, "token").send_keys(TOKEN)
        retry.find_element(By.TAG_NAME, "button").click()

        def completed(_: Any) -> bool:
            return bool(driver.execute_script(STATUS) == "COMPLETED")

        try:
            WebDriverWait(driver, 30, poll_frequency=0.1).until(completed)
        except TimeoutException:
            (shots / "timeout.html").write_text(driver.page_source)
            raise
        shot = shots / "completed.png"
        driver.save_screenshot(str(shot))
        return {
            "before": status_before,
            "rollbacks": rollbacks,
            "url": driver.current_url,
            "shot": shot,
        }
    finally:
        driver.quit()


async def test_a_compensated_run_is_retried_from_the_browser_and_completes(
    workflows: RedisWorkflowProvider, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="plait.dashboard")
    declines = {"42"}
    workflows.register(consumer(declines))
    handle = await workflows.execute(order_saga, Order(order_id="42"))
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=timedelta(seconds=20))
    declines.clear()  # the card goes through on the retry
    options = DashboardOptions(prefix=prefix, allow_actions=True, token=TOKEN)
    with serve(REDIS_URL, options) as base:
        seen = await anyio.to_thread.run_sync(browse, base, handle.run_id, tmp_path)
    assert seen["before"] == "FAILED"
    assert seen["rollbacks"] == ["rollback:hold", "rollback:reserve"]  # reverse completion
    assert seen["url"].endswith(f"/runs/{urllib.parse.quote(handle.run_id)}")
    assert seen["shot"].stat().st_size > 0
    assert (await handle.describe()).status.value == "COMPLETED"
