"""The dashboard in headless Chromium (Debian's `chromium`, driven by the Python `playwright` package):
the page takes a key, lists the key's campaigns and charts minute windows that a scripted stream writes
into Redis, refreshing live. A screenshot is kept in test-artifacts/dashboard.png."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils

from core.settings import Settings
from tests.api.conftest import (
    GENEROUS,
    Adv,
    campaign,
    decision,
    free_port,
    minute_record,
    set_spend,
    write_decisions,
    write_windows,
)
from tests.conftest import ROOT
from vickrey.api import create_app

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip
MINUTE = 60_000


def chromium_path() -> str:
    """The Debian Chromium binary; fails (never skips) with what to install when it is missing."""
    found = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if not found:
        pytest.fail(
            "Chromium is missing: the dashboard test needs Debian's browser "
            "(`apt-get update && apt-get install -y chromium chromium-driver`); Playwright's own "
            "browser download does not work here."
        )
    return str(found)


@asynccontextmanager
async def browser(tmp_path: Path) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page of headless Debian Chromium, and the page errors and console errors it reports."""
    executable = chromium_path()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail(
            "the Python package `playwright` is missing: pip install playwright (no browser download)"
        )
    errors: list[str] = []
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 1500},
        )  # fmt: skip
        try:
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield page, errors
        finally:
            await context.close()


@pytest.fixture
async def live(stack: Settings) -> AsyncIterator[str]:
    """The real app on 127.0.0.1 and a free port (Chromium needs a real socket)."""
    server = test_utils.TestServer(create_app(stack, rate_limit=GENEROUS), host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


async def post(base: str, adv: Adv, body: dict[str, Any]) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(base + "v1/campaigns", data=orjson.dumps(body), headers=adv.headers) as resp,
    ):
        assert resp.status == 201, await resp.text()


async def scripted_stream(
    settings: Settings, r: aioredis.Redis, now: int, minutes: range, campaign_id: str, scale: int
) -> None:
    """Minute windows as reporting would write them: a daytime curve of impressions, ~1.5 % clicks."""
    base = now // MINUTE * MINUTE
    records = []
    for m in minutes:
        impressions = scale * (40 + (m * 7) % 23 + (15 if m % 10 < 5 else 0))
        clicks = (impressions * 3 + m) // 200
        records.append(
            minute_record(campaign_id, base - m * MINUTE, impressions, clicks, impressions * 4_500)
        )
    await write_windows(settings, r, records)


async def test_dashboard_shows_campaigns_and_live_charts(
    live: str, stack: Settings, aredis: aioredis.Redis, alice: Adv, bob: Adv, tmp_path: Path
) -> None:
    await post(live, alice, campaign("c-laptops", sample=0))
    await post(live, alice, campaign("c-battery", sample=1))
    await post(live, bob, campaign("c-bob-secret", sample=2))
    now = int(time.time() * 1000)
    await scripted_stream(stack, aredis, now, range(1, 45), "c-laptops", 3)
    await scripted_stream(stack, aredis, now, range(1, 45), "c-battery", 1)
    await set_spend(stack, aredis, "c-laptops", today=61_000_000, total=250_000_000, now_ms=now)
    await set_spend(stack, aredis, "c-battery", today=12_500_000, total=40_000_000, now_ms=now)

    async with browser(tmp_path) as (page, errors):
        await page.goto(live)
        await page.fill("#key", alice.key)  # entered once ...
        await page.click("#key-form button")
        await page.wait_for_selector("article.campaign[data-campaign-id='c-laptops']")
        cards = await page.eval_on_selector_all(
            "article.campaign", "els => els.map(e => e.dataset.campaignId)"
        )
        assert cards == ["c-battery", "c-laptops"]  # Bob's campaign is not shown
        laptops = page.locator("article[data-campaign-id='c-laptops']")
        assert "Impressions" in (await laptops.text_content() or "")
        charts = laptops.locator("svg.chart")
        assert await charts.count() == 5
        assert int(await charts.first.get_attribute("data-points") or 0) == 60
        spend_chart = laptops.locator("svg.chart[data-title='Spend per minute']")
        assert await spend_chart.locator("rect.bar-value").count() == 44  # one bar per minute written
        first = await laptops.locator(".tile .value").first.inner_text()

        # The stream goes on: the page picks the new minute up by itself (it polls every 5 s).
        await scripted_stream(stack, aredis, int(time.time() * 1000), range(0, 1), "c-laptops", 50)
        await page.wait_for_function(
            "old => document.querySelector(\"article[data-campaign-id='c-laptops'] .tile .value\")"
            ".textContent !== old", arg=first, timeout=15_000,
        )  # fmt: skip

        await page.reload()  # ... and kept in localStorage
        await page.wait_for_selector("article.campaign[data-campaign-id='c-battery']")
        assert await page.is_hidden("#key-form")
        await page.wait_for_timeout(300)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        assert errors == []
        await page.click("#forget")  # a wrong key brings the form back, saying so
        await page.fill("#key", "vk_" + "x" * 32)
        await page.click("#key-form button")
        await page.wait_for_function(
            "() => document.querySelector('#status').textContent.includes('not accepted')"
        )
        assert await page.is_visible("#key-form") and await page.locator("article.campaign").count() == 0
    assert all("401 (Unauthorized)" in e for e in errors), errors  # only the wrong key's answers


async def test_dashboard_shows_the_autopilots_bid_history_pacing_and_reason(
    live: str, stack: Settings, aredis: aioredis.Redis, alice: Adv, tmp_path: Path
) -> None:
    auto = campaign("c-auto", sample=1, goal={"type": "max_clicks", "max_bid_micros": 600_000})
    del auto["bid"]  # the autopilot bids
    await post(live, alice, auto)
    await post(live, alice, campaign("c-manual", sample=0))
    now = int(time.time() * 1000)
    await scripted_stream(stack, aredis, now, range(1, 30), "c-auto", 1)
    await set_spend(stack, aredis, "c-auto", today=7_250_000, total=40_000_000, now_ms=now)
    reason = "spending 0.62x the rate that ends the day on budget: bid +9%"
    await write_decisions(stack, aredis, [
        decision("c-auto", 1, now - 20 * MINUTE, 300_000, "cold start: bid 0.30 from the category's CTR"),
        decision("c-auto", 2, now - 10 * MINUTE, 280_000, "dropped usb-c charger: no click in 151+ impressions",
                 keywords=["power bank"], removed=["usb-c charger"]),
        decision("c-auto", 3, now - MINUTE, 331_000, reason, keywords=["power bank", "long flight"],
                 added=["long flight"]),
    ])  # fmt: skip

    async with browser(tmp_path) as (page, errors):
        await page.goto(f"{live}#key={alice.key}")
        section = page.locator("article[data-campaign-id='c-auto'] section.autopilot")
        await section.wait_for()
        assert "goal max_clicks" in (await section.locator("h3").first.inner_text())
        assert await section.locator(".autopilot-reason").inner_text() == (
            f"Last decision (v3, {time.strftime('%H:%M', time.gmtime((now - MINUTE) / 1000))} UTC): {reason}"
        )
        assert await section.locator(".autopilot-bid").inner_text() == "Effective bid: CPC 0.33"
        assert "power bank, long flight" in await section.locator(".autopilot-keywords").inner_text()
        changes = await section.locator(".autopilot-changes li").all_inner_texts()
        assert [c.split(": ", 1)[1] for c in changes] == ["added long flight", "removed usb-c charger"]
        assert "Spent today: 7.25 vs." in await section.locator(".autopilot-pace").inner_text()

        bid_chart = section.locator("svg.chart[data-title='Autopilot bid (CPC) over time']")
        assert await bid_chart.locator("circle.point").count() == 3  # one per decision
        pace = section.locator("svg.chart[data-title='Spend today vs. even pace (UTC day)']")
        names = await pace.locator("polyline.series").evaluate_all("els => els.map(e => e.dataset.name)")
        assert names == ["spent today", "even pace"]

        meta = await page.locator("article[data-campaign-id='c-auto'] .meta").inner_text()
        assert meta.startswith("bid set by the autopilot · goal max_clicks")
        manual = page.locator("article[data-campaign-id='c-manual']")
        assert await manual.locator("svg.chart").count() == 5
        assert await manual.locator("section.autopilot").count() == 0  # manual campaigns: no section
        await page.screenshot(path=str(tmp_path / "autopilot.png"), full_page=True)
    assert errors == []
