"""The status page in a real headless Chromium (Debian's, driven by Playwright): it loads,
shows the running agent's live fps and counts, and its snapshot image loads. The page is
opened with ?token= and must send the token on each of its own requests."""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from tests.agent_helpers import pattern_pipeline, start_agent, wait_until
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_http import TOKEN, fetch

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="playwright is not installed (pip install -e .[dev]; scripts/setup.sh does)",
    ),
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"{CHROMIUM} is not installed (apt-get install chromium; scripts/setup.sh does)",
    ),
]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    token_file = tmp_path / "http-token"
    token_file.write_text(TOKEN)
    body = pattern_pipeline("boxes", "detector", fps=20) + (
        f'\n[http]\nenabled = true\nport = 0\ntoken_file = "{token_file}"\n'
    )
    agent = start_agent(tmp_path, body)
    wait_until(lambda: agent.pipelines["boxes"].stats.results >= 5, 20, "five results")
    yield agent
    agent.stop()


@pytest.fixture
def page(agent: Agent) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            assert agent.http is not None and agent.http.address is not None
            _, port = agent.http.address
            page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            yield page
            assert errors == [], errors
        finally:
            browser.close()


def shown(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text())


def test_the_page_shows_the_live_fps_and_the_snapshot(agent: Agent, page: Any) -> None:
    card = 'section.pipeline[data-pipeline="boxes"]'
    page.wait_for_function(
        f"parseFloat(document.querySelector('{card} .fps')?.textContent) > 0", timeout=15_000
    )
    assert page.title() == "edge-agent"
    assert shown(page, "#device") == "test-device"
    assert shown(page, "#error") == ""

    # The fps shown is the agent's, as /api/status has it at about the same time.
    status = fetch(agent, "/api/status", token=TOKEN).json()
    fps = float(shown(page, f"{card} .fps"))
    assert fps > 0
    assert abs(fps - status["pipelines"]["boxes"]["fps"]) <= max(2.0, 0.2 * fps), (fps, status)

    # It is live: the result count shown keeps growing with the agent's.
    def results_shown() -> int:
        return int(shown(page, f"{card} .counts").split(" results")[0])

    first = results_shown()
    deadline = time.monotonic() + 5
    while results_shown() <= first and time.monotonic() < deadline:
        time.sleep(0.1)
    later = results_shown()
    assert first < later <= agent.pipelines["boxes"].stats.results

    # The data is fresh: its age is shown, in seconds.
    age = shown(page, "#age")
    assert age.endswith(" s") and float(age[:-2]) <= 1.0, age

    # The snapshot image loaded, at the frame's size.
    page.wait_for_function("document.getElementById('snapshot').naturalWidth > 0", timeout=15_000)
    size = page.evaluate(
        "[document.getElementById('snapshot').naturalWidth,"
        " document.getElementById('snapshot').naturalHeight]"
    )
    assert size == [640, 480]

    # Models, outbox and link are shown.
    assert "detector 1.0.0 on cpu" in shown(page, "#models")
    assert "pending" in shown(page, "#outbox")
    assert "disabled" in shown(page, "#link")
    # The plot has drawn something.
    drawn = page.evaluate(
        f"""(() => {{
          const c = document.querySelector('{card} canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
          return n;
        }})()"""
    )
    assert drawn > 100


def test_the_data_on_the_page_is_at_most_a_second_old_and_its_age_is_not_understated(
    agent: Agent, page: Any
) -> None:
    """With a scraper reading /api/status ten times a second beside the page, as Prometheus
    or a second page would, the page is often answered with a status made for the scraper
    up to reuse_ms before (250 ms by default). Sampled through three seconds: the data on
    screen is at most 1 s old by the wall clock (browser and agent share it here), and the
    age the header shows is never less than that."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(0.1):
            fetch(agent, "/api/status", token=TOKEN)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        page.wait_for_function("document.getElementById('age').dataset.ts", timeout=15_000)
        samples = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            # The true age of the data shown, and the bound the header is drawn from.
            samples.append(
                page.evaluate(
                    "[Date.now() / 1000 - Number(document.getElementById('age').dataset.ts),"
                    " (Date.now() - dataMadeAfter) / 1000]"
                )
            )
            time.sleep(0.05)
    finally:
        stop.set()
        scraper.join(5)
    true_ages = [true_age for true_age, _ in samples]
    assert len(samples) > 20
    assert max(true_ages) <= 1.0, sorted(true_ages)[-5:]
    understated = [(t, b) for t, b in samples if b < t - 0.002]  # X-Data-Age is in ms
    assert not understated, understated
    # The header shows that bound.
    age = shown(page, "#age")
    assert age.endswith(" s") and float(age[:-2]) <= 1.0, age
