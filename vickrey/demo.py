"""`make demo`: the whole story on a generated chat stream, in about a minute.

Services up (make did that) → a clean demo stack (prefix `demo.`, namespace `demo`) → the
advertisers' sample campaigns (and one refused) → an autopilot campaign made from creatives and a
brief, with the targeting Vickrey derived for it → `vickrey run` → a chat stream with a progress
bar → clicks on some of the ads → purchases inside the chat, attributed once → the autopilot's bid
changes with their reasons → billing → a per-campaign table read back from the ledger, the
conversions and the reports → where to look next. Nothing is
left running unless `--keep-running`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.redis_client import redis_from_url
from core.settings import Settings
from core.topics import delete_topics, ensure_topics, topic_partitions
from vickrey.campaign_store import apply_campaigns, campaign_spend
from vickrey.client import ChatAdsClient

SAMPLES = Path(__file__).resolve().parent / "samples"
# What people say to the assistant, as the chat service would publish it: (what they typed,
# IAB category, keywords). Some of it is sensitive or unsafe on purpose.
CHAT_LINES: list[tuple[str, str, list[str]]] = [
    ("my laptop battery dies in an hour", "IAB19", ["laptop", "battery"]),
    ("which charger for my phone?", "IAB19-6", ["charger", "phone"]),
    ("power bank for a long flight", "IAB19-28", ["power bank", "flight"]),
    ("cheap flights to Tokyo in May", "IAB20-3", ["flights", "tokyo"]),
    ("hotels near Shinjuku station", "IAB20-18", ["hotels", "tokyo"]),
    ("3 days in Kyoto, where to stay?", "IAB20-20", ["kyoto", "ryokan"]),
    ("weekend in Lisbon or Rome?", "IAB20-14", ["europe", "lisbon", "rome"]),
    ("quick vegan dinner ideas", "IAB8", ["vegan", "dinner", "recipe"]),
    ("best espresso grinder under $200", "IAB8-6", ["espresso", "grinder"]),
    ("debugger for python async code", "IAB19-18", ["python", "debugger"]),
    ("learn basic Japanese before my trip", "IAB5-8", ["japanese", "learn"]),
    ("is an electric car worth it?", "IAB2-10", ["electric car", "ev"]),
    ("I keep getting headaches", "IAB7-1", ["headache"]),  # health: sensitive, no ads
    ("who should I vote for", "IAB11", ["election"]),  # politics: sensitive, no ads
]
COUNTRIES = ["US", "US", "US", "GB", "CA", "DE", "JP", "FR"]
DEMO_DECIDE_EVERY_S = 5
LOCALES = {"US": "en-US", "GB": "en-GB", "CA": "en-CA", "DE": "de-DE", "JP": "ja-JP", "FR": "fr-FR"}


def intent_event(rng: random.Random, index: int, run: str) -> dict[str, Any]:
    _, category, keywords = rng.choice(CHAT_LINES)
    country = rng.choice(COUNTRIES)
    user = f"demo-user-{rng.randrange(400)}"
    return {
        "schema_version": 1,
        "event_id": f"{run}-{index}",
        "ts": int(time.time() * 1000),
        "user_id": user,
        "session_id": f"{user}-s{rng.randrange(3)}",
        "placement": rng.choice(["chat_inline", "chat_inline", "chat_sidebar"]),
        "slots": rng.choice([1, 1, 2, 3]),
        "floor_cpm_micros": rng.choice([0, 0, 500_000]),
        "intent": {"category": category, "keywords": keywords, "confidence": round(rng.uniform(0.6, 0.99), 2)},
        "locale": LOCALES[country],
        "country": country,
        "device": rng.choice(["desktop", "mobile", "mobile"]),
        "safety": {"labels": ["violence_graphic"] if rng.random() < 0.02 else []},
        "consent": {"ads": rng.random() > 0.05, "personalization": True},
        "age_bracket": "13_17" if rng.random() < 0.03 else "18_plus",
    }


@functools.cache
def console() -> Console:
    """The demo's rich console. On a terminal: bold headers and the progress bar redrawn in place.
    Elsewhere (a pipe, a log): plain text, not wrapped at 80 columns, and the bar once, when full."""
    return Console(highlight=False, emoji=False, soft_wrap=not sys.stdout.isatty())


def say(text: str) -> None:
    console().print(f"\n== {text}", style="bold", markup=False)


def progress_bar(label: str) -> Progress:
    """`label [━━━━━━    ] done/total rate elapsed`; the task's `rate` field is shown as it is."""
    return Progress(TextColumn(f"  {label}", markup=False), BarColumn(bar_width=30), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}", markup=False), TimeElapsedColumn(), console=console())


async def read_topic(settings: Settings, topic: str, until: float, want: int = 0, idle_s: float = 2.0) -> list[dict[str, Any]]:
    """Committed records of a demo topic: until `want` arrived and the topic went quiet, or `until`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        name = settings.topic(topic)
        partitions = await topic_partitions(settings, name)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        out: list[dict[str, Any]] = []
        last_new = time.monotonic()
        while time.monotonic() < until:
            batch = await consumer.getmany(timeout_ms=300)
            got = [orjson.loads(r.value) for records in batch.values() for r in records if r.value]
            if got:
                out += got
                last_new = time.monotonic()
            elif len(out) >= want and time.monotonic() - last_new > idle_s:
                break
        return out
    finally:
        await consumer.stop()


async def stream_chat(settings: Settings, events: int, rate: int, run: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=5)
    await producer.start()
    rng = random.Random(7)
    started = time.monotonic()
    try:
        with progress_bar("chat events") as bar:
            task = bar.add_task("chat events", total=events, rate="")
            for i in range(events):
                event = intent_event(rng, i, run)
                await producer.send(settings.topic("chat.intents"), orjson.dumps(event), key=event["user_id"].encode())
                bar.update(task, completed=i + 1, rate=f"{(i + 1) / max(1e-3, time.monotonic() - started):.0f}/s")
                if i % max(1, events // 20) == 0 or i == events - 1:
                    await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()


async def click_some(settings: Settings, impressions: list[dict[str, Any]], share: float) -> int:
    """People click a share of the ads they see (after reading them for a moment)."""
    rng = random.Random(11)
    chosen = [i for i in impressions if rng.random() < share]
    chosen += rng.sample(chosen, min(3, len(chosen)))  # a few double clicks: billed once
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=5)
    await producer.start()
    try:
        for impression in chosen:
            click = {
                "schema_version": 1, "click_id": f"click-{uuid.uuid4().hex[:12]}", "impression_id": impression["impression_id"],
                "ts": max(int(time.time() * 1000), impression["ts"] + 500), "user_id": impression["user_id"],
            }
            await producer.send(settings.topic("ad.clicks.raw"), orjson.dumps(click), key=impression["impression_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()
    return len(chosen)


async def buy_some(settings: Settings, clicks: list[dict[str, Any]], share: float) -> int:
    """Some clicks end in a purchase inside the chat, reported by the chat service's checkout
    (`ChatAdsClient.report_purchase`); one order is reported twice (a retry): counted once."""
    rng = random.Random(17)
    orders = [(c["click_id"], f"order-{uuid.uuid4().hex[:10]}", rng.randrange(2, 40) * 1_000_000)
              for c in clicks if rng.random() < share]
    orders += orders[:1]
    async with ChatAdsClient(settings) as chat:
        for click_id, order_id, value_micros in orders:
            await chat.report_purchase(click_id, order_id, value_micros=value_micros)
    return len(orders)


def table(ledger: list[dict[str, Any]], reports: dict[str, list[dict[str, Any]]], names: dict[str, str],
          spend: dict[str, int], conversions: list[dict[str, Any]]) -> Table:
    """Per campaign, from the billing ledger (most spend first) and ad.conversions, with Redis spend
    and the minute reports beside them."""
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for entry in ledger:
        row = rows[entry["campaign_id"]]
        row["impressions" if entry["kind"] == "impression" else "clicks"] += 1
        row["spend"] += entry["amount_micros"]
        row["overdelivery"] += int(entry.get("overdelivery", False))
    for conversion in conversions:
        row = rows[conversion["campaign_id"]]
        row["conversions"] += 1
        row["value"] += conversion["value_micros"]
    out = Table(box=box.SIMPLE, show_edge=False, header_style="bold")
    out.add_column("campaign")
    out.add_column("advertiser")
    for heading in ("impr", "clicks", "CTR", "spend $", "eff CPM $", "conv", "$/conv", "ROAS", "Redis $",
                    "report impr", "report $", "report conv"):
        out.add_column(heading, justify="right")
    for campaign_id in sorted(rows, key=lambda c: -rows[c]["spend"]):
        row = rows[campaign_id]
        impressions, clicks, converted = row["impressions"], row["clicks"], row["conversions"]
        ctr = f"{100 * clicks / impressions:.1f}%" if impressions else "-"
        cpm = f"{row['spend'] / impressions / 1000:.2f}" if impressions else "-"
        windows = reports.get(campaign_id, [])
        out.add_row(
            campaign_id, names.get(campaign_id, "?"), f"{impressions}", f"{clicks}", ctr,
            f"{row['spend'] / 1e6:.2f}", cpm, f"{converted}",
            f"{row['spend'] / converted / 1e6:.2f}" if converted else "-",
            f"{row['value'] / row['spend']:.1f}x" if row["spend"] and converted else "-",
            f"{spend.get(campaign_id, 0) / 1e6:.2f}",
            f"{sum(w['impressions'] for w in windows)}",
            f"{sum(w['spend_micros'] for w in windows) / 1e6:.2f}",
            f"{sum(w.get('conversions', 0) for w in windows)}",
        )
    return out


def show(grid: Table) -> None:
    """`grid` at its natural width. Fitted into a narrower terminal, rich would cut the numbers
    short; the terminal wraps the long lines instead, as it would plain text."""
    out = console()
    grid.width = out.measure(grid, options=out.options.update_width(10_000)).maximum
    out.print(grid, crop=False)


async def demo(settings: Settings, events: int, rate: int, keep_running: bool) -> int:
    root = Path(__file__).resolve().parent.parent
    vickrey = str(Path(sys.executable).with_name("vickrey"))
    # The autopilot decides every 5 s of traffic here (300 s by default), so a short demo shows it.
    env = settings.with_(metrics_port=0, autopilot_decide_every_s=DEMO_DECIDE_EVERY_S).as_env()
    say(f"Kafka at {settings.kafka}, Redis at {settings.redis}: a clean demo stack (prefix '{settings.topic_prefix}', namespace '{settings.namespace}')")
    redis = redis_from_url(settings.redis)
    await delete_topics(settings)
    stale = [key async for key in redis.scan_iter(match=f"{settings.namespace}:*", count=1000)]
    for start in range(0, len(stale), 500):
        await redis.delete(*stale[start : start + 500])
    await asyncio.sleep(1.0)  # let the broker finish deleting before re-creating
    await ensure_topics(settings)
    print(f"  every topic created under '{settings.topic_prefix}'")

    say("Advertisers upload campaigns (`vickrey campaigns apply`): one of them is refused")
    samples = json.loads((SAMPLES / "campaigns.json").read_text())
    subprocess.run([vickrey, "campaigns", "apply", str(SAMPLES / "bad_campaigns.json")], env=env, cwd=root, check=False)
    result = await apply_campaigns(settings, redis, samples)
    print(f"  {len(result.applied)} sample campaigns stored; workers pick changes up within 1 s")
    names = {c["campaign_id"]: c["advertiser_id"] for c in samples}

    say("An advertiser uploads only creatives, a brief and a budget (goal max_clicks): Vickrey derives the targeting")
    subprocess.run([vickrey, "campaigns", "apply", str(SAMPLES / "autopilot_campaign.json")], env=env, cwd=root,
                   check=False)
    names.update({c["campaign_id"]: c["advertiser_id"]
                  for c in json.loads((SAMPLES / "autopilot_campaign.json").read_text())})

    say("Starting the pipeline (`vickrey run`: auction worker + attribution, billing, reporting, feedback, autopilot)")
    log_path = root / ".local" / "logs" / "demo-pipeline.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pipeline = subprocess.Popen([vickrey, "run"], env=env, cwd=root, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    try:
        await asyncio.sleep(4)
        say(f"A chat stream flows: {events} intent events at ~{rate}/s")
        run = f"demo{int(time.time())}"
        await stream_chat(settings, events, rate, run)
        decisions = await read_topic(settings, "ad.decisions", time.monotonic() + 40, want=events)
        impressions = await read_topic(settings, "ad.impressions", time.monotonic() + 10)
        fills = sum(1 for d in decisions if d["ads"])
        reasons: dict[str, int] = defaultdict(int)
        for d in decisions:
            if not d["ads"]:
                reasons[d["no_fill_reason"]] += 1
        print(f"  {len(decisions)} decisions, {fills} with ads ({100 * fills / max(1, len(decisions)):.0f}% fill), {len(impressions)} impressions")
        print("  no ad, and why: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])))
        sample = next((d for d in decisions if len(d["ads"]) > 1), None)
        if sample:
            ad = sample["ads"][0]
            print(f"  e.g. {sample['event_id']}: '{ad['creative']['title']}' ({ad['label']}) because {ad['why']['matched_keywords']}")

        say("People click some ads; attribution checks them, billing charges CPC clicks once")
        clicks = await click_some(settings, impressions, share=0.08)
        print(f"  {clicks} clicks sent (3 of them double clicks)")
        ledger = await read_topic(settings, "billing.ledger", time.monotonic() + 30, want=len(impressions), idle_s=4)
        invalid = await read_topic(settings, "ad.clicks.invalid", time.monotonic() + 3, idle_s=1)
        billable = await read_topic(settings, "ad.clicks", time.monotonic() + 3, idle_s=1)

        say("Some clicks end in a purchase inside the chat; the conversions role attributes each once")
        orders = await buy_some(settings, billable, share=0.2)
        conversions = await read_topic(settings, "ad.conversions", time.monotonic() + 20, want=orders - 1, idle_s=2)
        refused = await read_topic(settings, "ad.conversions.invalid", time.monotonic() + 5, want=1, idle_s=1)
        print(f"  {orders} purchases reported (one of them twice), {len(conversions)} attributed, "
              f"{len(refused)} refused: " + ", ".join(sorted({r["reason"] for r in refused})))
        closed = await read_topic(settings, "reports.campaign-minute", time.monotonic() + 2, idle_s=1)
        await asyncio.sleep(2.5)  # reporting refreshes the open minute windows about every second
        spend = {c: (await campaign_spend(settings, redis, c, int(time.time() * 1000)))["total_micros"] for c in names}
        reports = {
            c: [orjson.loads(w) for w in (await redis.hgetall(settings.keys.minutes(c))).values()] for c in names
        }

        say("The autopilot bid for the autopilot campaign as the traffic came (campaigns.autopilot)")
        decided = await read_topic(settings, "campaigns.autopilot", time.monotonic() + 15, want=2, idle_s=3)
        for record in decided[-5:]:
            bid = record["bid"]["amount_micros"] / 1e6 if record["bid"] else None
            print(f"  v{record['version']} bid {bid if bid is None else f'{bid:.2f}'}: {record['reason']}")
        if not decided:
            print("  no decision yet (it decides every 5 s of traffic once the feed's windows close)")

        say("Per campaign, from the billing ledger and ad.conversions; Redis spend and the minute reports beside them must agree")
        show(table(ledger, reports, names, spend, conversions))
        windows = sum(len(w) for w in reports.values())
        print(f"  ledger entries {len(ledger)}, invalid clicks {len(invalid)}, report windows {windows} "
              f"({len(closed)} closed and published on reports.campaign-minute; the current minute is still open)")
        say("Where to look next")
        prefix = f"VICKREY_TOPIC_PREFIX={settings.topic_prefix} VICKREY_NAMESPACE={settings.namespace}"
        print(f"  {prefix} .venv/bin/vickrey campaigns list        # live spend per campaign")
        print(f"  {prefix} .venv/bin/vickrey run                   # keep the pipeline up; reports on http://127.0.0.1:8081/reports/campaigns")
        print("  make loadtest DURATION=20s                         # Locust against the running stack")
        print(f"  pipeline log: {log_path}")
        try:
            from vickrey.api import demo_key

            key = demo_key(settings)
            print(f"  advertiser dashboard: run `{prefix} .venv/bin/vickrey api`, then open")
            print(f"    http://127.0.0.1:8080/#key={key}   (demo key for adv-voltbook: {key})")
        except ImportError:
            pass
    finally:
        if keep_running:
            print(f"  the pipeline keeps running (pid {pipeline.pid}); stop it with: kill {pipeline.pid}")
        else:
            pipeline.terminate()
            try:
                pipeline.wait(40)
            except subprocess.TimeoutExpired:
                pipeline.kill()
        await redis.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vickrey.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000, help="chat intent events to send (default 3000)")
    parser.add_argument("--rate", type=int, default=300, help="events per second (default 300)")
    parser.add_argument("--keep-running", action="store_true", help="leave the pipeline running at the end")
    args = parser.parse_args(argv)
    base = Settings.from_env()
    settings = base.with_(
        topic_prefix=os.environ.get("VICKREY_TOPIC_PREFIX") or "demo.",
        namespace=os.environ.get("VICKREY_NAMESPACE") or "demo",
    )
    return asyncio.run(demo(settings, args.events, args.rate, args.keep_running))


if __name__ == "__main__":
    sys.exit(main())
