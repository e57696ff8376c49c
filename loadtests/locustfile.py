"""Locust load test of the running pipeline: chat intents in, decisions out, some clicks.

Each `ChatService` user is one chat-service frontend publishing intent events (from
loadtests.generator) through `vickrey.client.ChatAdsClient` at a steady rate per user
(request type "publish"). A consumer in this process correlates `ad.decisions` (read_committed)
and reports the end-to-end latency, intent produced -> decision readable, as request type
"decision" (a timeout is a failure), plus the fill rate; a share of impressions gets clicked
on `ad.clicks.raw` (request type "click"). The load shape (`VickreyShape`) is chosen by
VICKREY_LOAD_SHAPE: `steady`, `stepup` (toward saturation) or `spike`.

Bounded: the shape ends after VICKREY_LOAD_DURATION_S and no more than VICKREY_LOAD_MAX_EVENTS
intents are published; load goes to 127.0.0.1 only. Run it with `python -m loadtests.run`
(`make loadtest`), which also writes the reports, or by hand:
    VICKREY_LOAD_SHAPE=spike locust -f loadtests/locustfile.py --headless
Settings: the usual VICKREY_* (topic prefix, namespace ...) plus
    VICKREY_LOAD_RATE (intents/s of the base load, default 200), VICKREY_LOAD_USER_RATE
    (intents/s per user, default 10), VICKREY_LOAD_CLICK_RATE (share of impressions clicked,
    default 0.05), VICKREY_DECISION_TIMEOUT_S (default 5), VICKREY_LOAD_SEED,
    VICKREY_LOADTEST_SUMMARY (path of a JSON summary written at the end).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import gevent
import orjson
from locust import LoadTestShape, User, constant_throughput, events, task
from locust.env import Environment

from core.settings import Settings
from loadtests.bridge import AsyncBridge
from loadtests.generator import IntentGenerator
from loadtests.shapes import Profile, profile_from_env
from loadtests.stack import require_local
from loadtests.summary import LatencyStats
from vickrey.client import ChatAdsClient, DecisionTimeout


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


class LoadContext:
    """Everything the users share: the bridge, the client, the generator and the tallies."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.settings = Settings.from_env()
        require_local(self.settings)
        self.profile: Profile = profile_from_env()
        self.click_rate = _env_float("VICKREY_LOAD_CLICK_RATE", 0.05)
        self.timeout_s = _env_float("VICKREY_DECISION_TIMEOUT_S", 5.0)
        self.generator = IntentGenerator(int(_env_float("VICKREY_LOAD_SEED", time.time())))
        self.rng = random.Random(self.generator.run_tag)
        self.stats = LatencyStats()
        self.inflight = 0  # intents published whose decision (or timeout) has not come back
        self.clicks_inflight = 0
        self.bridge = AsyncBridge()
        self.client = ChatAdsClient(self.settings, max_pending=200_000)
        self.bridge.call(self.client.start(), timeout=30)

    # -- asyncio side ------------------------------------------------------------------------

    async def publish(self, intent: dict[str, Any]) -> str:
        started = time.perf_counter()
        event_id = await self.client.publish_intent(intent)
        self.bridge.post(self._published)  # runs before this event's on_decision / on_timeout
        self.bridge.loop.create_task(self._track(event_id, intent["user_id"], started))
        return event_id

    def _published(self) -> None:
        self.inflight += 1

    async def _track(self, event_id: str, user_id: str, started: float) -> None:
        try:
            decision = await self.client.decision(event_id, self.timeout_s)
        except DecisionTimeout as error:
            self.bridge.post(self.on_timeout, error)
            return
        self.bridge.post(self.on_decision, decision, user_id, time.perf_counter() - started)

    # -- gevent side -------------------------------------------------------------------------

    def fire(self, request_type: str, name: str, seconds: float, length: int = 0, error: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=seconds * 1000.0,
            response_length=length, exception=error, context={},
        )

    def on_decision(self, decision: dict[str, Any], user_id: str, seconds: float) -> None:
        self.inflight -= 1
        ads = decision.get("ads") or []
        self.stats.decision(seconds, bool(ads), decision.get("no_fill_reason"))
        self.fire("decision", "ad.decisions", seconds, len(ads))
        running = self.environment.runner is not None and self.environment.runner.state not in ("stopping", "stopped", "quitting")
        for ad in ads:
            if running and self.rng.random() < self.click_rate:
                # People click after reading: 0.3-3 s later (attribution calls < 100 ms too_fast).
                self.clicks_inflight += 1
                gevent.spawn_later(self.rng.uniform(0.3, 3.0), self.click, ad["impression_id"], user_id)

    def on_timeout(self, error: DecisionTimeout) -> None:
        self.inflight -= 1
        self.stats.timeouts += 1
        self.fire("decision", "ad.decisions", error.timeout_s, 0, error)

    def click(self, impression_id: str, user_id: str) -> None:
        started = time.perf_counter()
        try:
            self.bridge.call(self.client.publish_click(impression_id, user_id), timeout=10)
        except (Exception, gevent.Timeout) as error:
            self.fire("click", "ad.clicks.raw", time.perf_counter() - started, 0, error)
        else:
            self.stats.clicks += 1
            self.fire("click", "ad.clicks.raw", time.perf_counter() - started, 0)
        finally:
            self.clicks_inflight -= 1

    def drain(self, max_wait_s: float) -> None:
        """Wait (cooperatively) for outstanding decisions and clicks, at most `max_wait_s`."""
        deadline = time.monotonic() + max_wait_s
        while (self.inflight > 0 or self.clicks_inflight > 0) and time.monotonic() < deadline:
            gevent.sleep(0.05)

    def summary(self) -> dict[str, Any]:
        return {
            **self.stats.summary(),
            "published": self.stats.published,
            "publish_failures": self.stats.publish_failures,
            "unanswered_at_end": self.inflight,
            "shape": self.profile.name,
            "base_rate_per_s": self.profile.rate,
            "topic_prefix": self.settings.topic_prefix,
            "namespace": self.settings.namespace,
        }

    def close(self) -> None:
        try:
            self.bridge.call(self.client.close(), timeout=15)
        finally:
            self.bridge.stop()


CONTEXT: LoadContext | None = None
CONTEXT_ERROR: BaseException | None = None


def context() -> LoadContext:
    while CONTEXT is None:  # the test_start listener is still connecting
        if CONTEXT_ERROR is not None:
            raise RuntimeError(f"the load test could not start: {CONTEXT_ERROR}")
        gevent.sleep(0.05)
    return CONTEXT


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    global CONTEXT, CONTEXT_ERROR
    if CONTEXT is None:
        try:
            CONTEXT = LoadContext(environment)
        except BaseException as error:
            CONTEXT_ERROR = error
            if environment.runner is not None:
                environment.runner.quit()
            raise


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    if CONTEXT is None:
        return
    CONTEXT.drain(CONTEXT.timeout_s + 1.0)
    path = os.environ.get("VICKREY_LOADTEST_SUMMARY")
    if path:
        with open(path, "wb") as out:
            out.write(orjson.dumps(CONTEXT.summary(), option=orjson.OPT_INDENT_2))


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    global CONTEXT
    if CONTEXT is not None:
        CONTEXT.close()
        CONTEXT = None


class ChatService(User):
    """One chat-service frontend: publishes `VICKREY_LOAD_USER_RATE` intents per second."""

    wait_time = constant_throughput(_env_float("VICKREY_LOAD_USER_RATE", 10.0))

    @task
    def publish_intent(self) -> None:
        ctx = context()
        if ctx.stats.published >= ctx.profile.max_events:
            ctx.profile.exhausted = True  # the shape ends the test at its next tick
            self.wait()
            return
        intent = ctx.generator.next()
        started = time.perf_counter()
        ctx.stats.published += 1
        try:
            ctx.bridge.call(ctx.publish(intent), timeout=10)
        except (Exception, gevent.Timeout) as error:
            ctx.stats.publish_failures += 1
            ctx.fire("publish", "chat.intents", time.perf_counter() - started, 0, error)
        else:
            ctx.fire("publish", "chat.intents", time.perf_counter() - started, 1)


class VickreyShape(LoadTestShape):
    """Users over time from the profile chosen by VICKREY_LOAD_SHAPE; ends the test on time."""

    def __init__(self) -> None:
        super().__init__()
        self.profile = profile_from_env()

    def tick(self) -> tuple[int, float] | None:
        profile = CONTEXT.profile if CONTEXT is not None else self.profile
        return profile.tick(self.get_run_time())
