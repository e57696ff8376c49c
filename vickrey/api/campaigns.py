"""`/v1/campaigns...`: an advertiser's own campaigns, stored and validated by `campaign_store`.

- Ownership: a campaign that is not the key's advertiser's answers 404 exactly like one that does
  not exist, so ids of other advertisers do not leak. Campaign ids are global, so creating one with an
  id that is taken (by anyone) answers 409, naming no owner.
- `advertiser_id` in a body is never trusted: left out, it is taken from the key; equal to the key's
  advertiser it is accepted; any other value is refused (400, nothing stored) together with every
  other problem of the body. The same holds for a `campaign_id` in a PUT body that differs from the
  path.
- POST creates only (409 when the id exists); PUT replaces only (404 when it does not).
- `/autopilot`: the autopilot's decisions for the campaign (docs/contract.md §7), oldest first, and
  the effective bid and targeting (the latest decision). Decision records are aggregates: they carry
  no user or session ids.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Final

import orjson
from aiohttp import web
from multidict import MultiMapping
from redis.asyncio import Redis

from autopilot.campaigns import prepare_campaign
from core.keys import AUTOPILOT_HISTORY_MAX
from core.settings import Settings
from schemas.campaign import validate_campaign
from vickrey.advertisers import Advertiser
from vickrey.api.http import ADVERTISER, REDIS, SETTINGS, ApiError, Handler, json_response, read_json
from vickrey.campaign_store import (
    AnnounceError,
    Change,
    UnknownCampaign,
    apply_campaigns,
    autopilot_history,
    campaign_spend,
    campaigns_spend,
    get_campaign,
    list_campaigns,
    set_status,
)
from vickrey.policy_store import get_policy

log = logging.getLogger("vickrey.api")

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MINUTE_MS: Final = 60_000
REPORT_DEFAULT_MS: Final = 3_600_000  # the last hour when `from` is left out
REPORT_MAX_MS: Final = 7 * 86_400_000
EPOCH_MS_MAX: Final = 2**53 - 1
_INT_FIELDS: Final = ("window_start", "window_end", "impressions", "clicks", "spend_micros", "ecpm_micros")
_CONVERSION_FIELDS: Final = ("conversions", "conversion_value_micros")
_EFFECTIVE_FIELDS: Final = ("bid", "keywords", "categories", "reason", "version", "ts")


def _context(request: web.Request) -> tuple[Settings, Redis, Advertiser]:
    return request.app[SETTINGS], request.app[REDIS], request[ADVERTISER]


def _strict(handler: Handler, query: tuple[str, ...] = ()) -> Handler:
    """`handler`, refusing (400) query parameters other than `query`, like unknown body fields."""

    async def checked(request: web.Request) -> web.StreamResponse:
        unknown = sorted({name for name in request.query if name not in query})
        if unknown:
            known = f"known: {', '.join(query)}" if query else "this operation takes none"
            raise ApiError(400, [f"(query): unknown parameter {name[:40]!r} ({known})" for name in unknown])
        return await handler(request)

    return checked


def _stored(change: Change) -> dict[str, Any]:
    if change.campaign is None:  # an upsert always carries its campaign
        raise RuntimeError(f"change {change.version} of {change.campaign_id} carries no campaign")
    return change.campaign


def _not_found(campaign_id: str) -> ApiError:
    return ApiError(404, [f"campaign_id: no campaign {campaign_id[:128]!r}"])


def _taken(campaign_id: str) -> ApiError:
    return ApiError(409, [f"campaign_id: {campaign_id!r} is taken; choose another id"])


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _own(request: web.Request) -> dict[str, Any]:
    """The campaign of the path, if it is the key's advertiser's; else 404."""
    settings, r, advertiser = _context(request)
    campaign_id = request.match_info["campaign_id"]
    if not ID_PATTERN.fullmatch(campaign_id):
        raise _not_found(campaign_id)
    campaign = await get_campaign(settings, r, campaign_id)
    if campaign is None or campaign.get("advertiser_id") != advertiser.advertiser_id:
        raise _not_found(campaign_id)
    return campaign


async def _view(settings: Settings, r: Redis, campaign: dict[str, Any]) -> dict[str, Any]:
    spend = await campaign_spend(settings, r, str(campaign["campaign_id"]), _now_ms())
    return dict(campaign, spend=spend)


def _announce_failed(exc: AnnounceError) -> ApiError:
    log.warning("campaign stored but not announced: %s", exc)
    return ApiError(
        503,
        ["service: the change is stored and live in the workers, but announcing it on Kafka failed; "
         "send the same request again (PUT for a new campaign) to announce it"],
    )  # fmt: skip


async def _store(request: web.Request, body: Any, path_id: str | None) -> dict[str, Any]:
    """Validate and store one campaign (create when `path_id` is None, else replace); 400 with every
    problem when refused, nothing stored."""
    settings, r, advertiser = _context(request)
    if not isinstance(body, dict):
        raise ApiError(400, validate_campaign(body)[1])
    item, problems = dict(body), []
    if item.get("advertiser_id", advertiser.advertiser_id) != advertiser.advertiser_id:
        problems.append(
            f"advertiser_id: is taken from your API key; leave it out or send {advertiser.advertiser_id!r}"
        )
    item["advertiser_id"] = advertiser.advertiser_id
    if path_id is not None:
        if item.get("campaign_id", path_id) != path_id:
            problems.append(f"campaign_id: must be left out or equal the id in the path ({path_id!r})")
        item["campaign_id"] = path_id
    if problems:  # refused whatever else: name the body's other problems too
        raise ApiError(400, problems + prepare_campaign(item, await get_policy(settings, r))[1])
    campaign_id = item.get("campaign_id")
    if path_id is None and isinstance(campaign_id, str) and await get_campaign(settings, r, campaign_id):
        raise _taken(campaign_id)
    try:
        result = await apply_campaigns(settings, r, [item])
    except AnnounceError as exc:
        raise _announce_failed(exc) from None
    if result.refused:
        stored = await get_campaign(settings, r, campaign_id) if isinstance(campaign_id, str) else None
        if stored is not None and stored.get("advertiser_id") != advertiser.advertiser_id:
            assert isinstance(campaign_id, str)  # another advertiser took the id meanwhile
            raise _taken(campaign_id) if path_id is None else _not_found(campaign_id)
        raise ApiError(400, result.refused[0].problems)
    return _stored(result.applied[0])


# ---- handlers ------------------------------------------------------------------------------------


async def list_own(request: web.Request) -> web.Response:
    settings, r, advertiser = _context(request)
    campaigns = [
        c for c in await list_campaigns(settings, r) if c.get("advertiser_id") == advertiser.advertiser_id
    ]
    spend = await campaigns_spend(settings, r, [str(c["campaign_id"]) for c in campaigns], _now_ms())
    return json_response({"campaigns": [dict(c, spend=spend[str(c["campaign_id"])]) for c in campaigns]})


async def create(request: web.Request) -> web.Response:
    settings, r, _ = _context(request)
    campaign = await _store(request, await read_json(request), None)
    location = f"/v1/campaigns/{campaign['campaign_id']}"
    return json_response(await _view(settings, r, campaign), 201, {"Location": location})


async def show(request: web.Request) -> web.Response:
    settings, r, _ = _context(request)
    return json_response(await _view(settings, r, await _own(request)))


async def replace(request: web.Request) -> web.Response:
    settings, r, _ = _context(request)
    current = await _own(request)
    campaign = await _store(request, await read_json(request), str(current["campaign_id"]))
    return json_response(await _view(settings, r, campaign))


def _status_handler(status: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        settings, r, _ = _context(request)
        campaign = await _own(request)
        try:
            change = await set_status(settings, r, str(campaign["campaign_id"]), status)
        except UnknownCampaign:
            raise _not_found(str(campaign["campaign_id"])) from None
        except AnnounceError as exc:
            raise _announce_failed(exc) from None
        if change is not None:
            campaign = _stored(change)
        return json_response(await _view(settings, r, campaign))

    return handler


# ---- report --------------------------------------------------------------------------------------


def _report_range(query: MultiMapping[str], now_ms: int) -> tuple[int, int]:
    """`from`, `to` (epoch ms; to defaults to now, from to one hour before to); 400 with every problem."""
    problems: list[str] = []

    def parse(name: str, default: int | None) -> int | None:
        raw = query.get(name)
        if raw is None or raw == "":
            return default
        if not re.fullmatch(r"[0-9]{1,16}", raw) or int(raw) > EPOCH_MS_MAX:
            problems.append(f"{name}: must be epoch milliseconds (an integer 0 to 2^53-1), got {raw[:40]!r}")
            return None
        return int(raw)

    to = parse("to", now_ms)
    start = parse("from", None if to is None else max(0, to - REPORT_DEFAULT_MS))
    if start is not None and to is not None:
        if start >= to:
            problems.append(f"from: must be before to ({start} is not before {to})")
        elif to - start > REPORT_MAX_MS:
            problems.append(f"to: at most {REPORT_MAX_MS} ms (7 days) after from, got {to - start} ms")
    if problems or start is None or to is None:
        raise ApiError(400, problems)
    return start, to


def _window(raw: bytes, campaign_id: str) -> dict[str, Any] | None:
    """The aggregate fields of one stored reports.campaign-minute record (and nothing else)."""
    try:
        record = orjson.loads(raw)
        window: dict[str, Any] = {f: record[f] for f in _INT_FIELDS}
        window["ctr"] = record["ctr"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        window = {}
    ints_ok = all(type(window.get(f)) is int and 0 <= window[f] <= EPOCH_MS_MAX for f in _INT_FIELDS)
    ctr = window.get("ctr")
    if (
        not ints_ok
        or not isinstance(ctr, int | float)
        or isinstance(ctr, bool)
        or not 0 <= ctr < float("inf")
    ):
        log.warning("skipping unreadable minute window of campaign %s: %.200r", campaign_id, raw)
        return None
    out = {f: window[f] for f in (*_INT_FIELDS[:5], "ctr", "ecpm_micros")}
    for field in _CONVERSION_FIELDS:  # 0 in minutes reported before conversions existed
        value = record.get(field, 0)
        out[field] = value if type(value) is int and 0 <= value <= EPOCH_MS_MAX else 0
    out["partial"] = record.get("partial") is True  # reporting marks the minute still open
    return out


async def report(request: web.Request) -> web.Response:
    settings, r, _ = _context(request)
    campaign = await _own(request)
    campaign_id = str(campaign["campaign_id"])
    now_ms = _now_ms()
    start, to = _report_range(request.query, now_ms)
    first = -(-start // MINUTE_MS) * MINUTE_MS  # windows are epoch-aligned: window_start in [from, to)
    fields = [str(ms) for ms in range(first, to, MINUTE_MS)]
    stored: list[Any] = await r.hmget(settings.keys.minutes(campaign_id), fields) if fields else []
    windows = [w for raw in stored if raw is not None and (w := _window(raw, campaign_id)) is not None]
    impressions = sum(w["impressions"] for w in windows)
    clicks = sum(w["clicks"] for w in windows)
    spend = sum(w["spend_micros"] for w in windows)
    conversions = sum(w["conversions"] for w in windows)
    value = sum(w["conversion_value_micros"] for w in windows)
    totals = {
        "impressions": impressions,
        "clicks": clicks,
        "ctr": clicks / impressions if impressions else 0.0,
        "spend_micros": spend,
        "conversions": conversions,
        "conversion_value_micros": value,
        # integer micros, rounded half up; null when there is nothing to divide by
        "cost_per_conversion_micros": (2 * spend + conversions) // (2 * conversions) if conversions else None,
        "return_on_ad_spend": value / spend if spend else None,
    }
    return json_response({
        "campaign_id": campaign_id,
        "from": start,
        "to": to,
        "status": campaign.get("status"),
        "pacing": campaign.get("pacing"),
        "budget": campaign.get("budget"),
        "spend": await campaign_spend(settings, r, campaign_id, now_ms),
        "totals": totals,
        "windows": windows,
    })  # fmt: skip


# ---- autopilot ------------------------------------------------------------------------------------


def _history_limit(query: MultiMapping[str]) -> int:
    """`limit`: 1 to AUTOPILOT_HISTORY_MAX (the default); 400 naming the field otherwise."""
    raw = query.get("limit")
    if raw is None:
        return AUTOPILOT_HISTORY_MAX
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= AUTOPILOT_HISTORY_MAX:
        raise ApiError(400, [f"limit: must be an integer 1 to {AUTOPILOT_HISTORY_MAX}, got {raw[:40]!r}"])
    return int(raw)


async def autopilot(request: web.Request) -> web.Response:
    settings, r, _ = _context(request)
    campaign = await _own(request)
    campaign_id = str(campaign["campaign_id"])
    history = await autopilot_history(settings, r, campaign_id, _history_limit(request.query))
    effective = {f: history[-1][f] for f in _EFFECTIVE_FIELDS} if history else None
    return json_response({
        "campaign_id": campaign_id,
        "goal": campaign.get("goal") or {"type": "manual"},
        "effective": effective,
        "history": history,
    })  # fmt: skip


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/campaigns", _strict(list_own))
    router.add_post("/v1/campaigns", _strict(create))
    router.add_get("/v1/campaigns/{campaign_id}", _strict(show))
    router.add_put("/v1/campaigns/{campaign_id}", _strict(replace))
    router.add_post("/v1/campaigns/{campaign_id}/pause", _strict(_status_handler("paused")))
    router.add_post("/v1/campaigns/{campaign_id}/resume", _strict(_status_handler("active")))
    router.add_get("/v1/campaigns/{campaign_id}/report", _strict(report, ("from", "to")))
    router.add_get("/v1/campaigns/{campaign_id}/autopilot", _strict(autopilot, ("limit",)))
