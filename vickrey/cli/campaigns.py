"""`vickrey campaigns …`: apply, list, show, pause, resume, delete."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import redis.asyncio as aioredis
import typer

from vickrey.campaign_store import (
    AnnounceError,
    Change,
    Refusal,
    UnknownCampaign,
    apply_campaigns,
    autopilot_history,
    campaign_spend,
    campaigns_spend,
    delete_campaign,
    get_campaign,
    list_campaigns,
    preview_campaigns,
    set_status,
)
from vickrey.cli.common import (
    CliError,
    dump,
    exit_with,
    money,
    print_table,
    read_json,
    settings,
    settings_epilog,
    with_redis,
)

app = typer.Typer(
    help="Manage advertisers' campaigns (stored in Redis, announced on the `campaigns` topic). "
    "Running workers see every change within 1 s, without a restart.",
    no_args_is_help=True,
)
File = Annotated[str, typer.Argument(metavar="FILE", help="JSON file, or - for standard input")]
CampaignId = Annotated[str, typer.Argument(metavar="ID", help="the campaign_id")]
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON on stdout")]


def _items(file: str) -> list[Any]:
    data = read_json(file)
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return [data]
    raise CliError("expected a JSON object (one campaign) or a list of campaign objects", 2)


def _print_refusals(refused: list[Refusal]) -> None:
    for ref in refused:
        label = f"campaign {ref.campaign_id!r}" if ref.campaign_id is not None else "campaign"
        print(f"refused {label} (item {ref.item}): {'; '.join(ref.problems)}", file=sys.stderr)


def _derived_lines(campaign: dict[str, Any]) -> list[str]:
    """What `targeting.auto` derived, one line for keywords and one for categories."""
    derived = campaign.get("targeting_derived")
    if not derived:
        return []
    keywords = ", ".join(f"{k['term']} ({k['from']})" for k in derived["keywords"]) or "none"
    categories = ", ".join(f"{c['category']} {c['name']} ({c['from']}: {c['matched']})"
                           for c in derived["categories"]) or "none"
    return [f"  derived keywords (phrase match): {keywords}", f"  derived categories: {categories}"]


@app.command(epilog=settings_epilog())
def apply(
    file: File,
    json: AsJson = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="store nothing: print the campaigns as they would be "
                                          "stored (with targeting_derived) as a JSON list")] = False,
) -> None:
    """Validate and upsert campaigns from FILE (`-` for standard input): one JSON object or a list.

    An invalid campaign is refused whole, every problem named on stderr, and so is one in a vertical
    the policy restricts; the valid ones are stored, in one transaction. With `targeting.auto` the
    keywords and categories derived from the creatives and the brief are printed (and stored).

    Exit code: 0 all applied, 1 some refused (the others are stored), 2 unreadable input.
    """
    config = settings()
    items = _items(file)
    if dry_run:
        prepared, refusals = with_redis(config, lambda r: preview_campaigns(config, r, items))
        _print_refusals(refusals)
        print(dump(prepared))
        exit_with(1 if refusals else 0)
        return
    try:
        result = with_redis(config, lambda r: apply_campaigns(config, r, items))
    except AnnounceError as exc:
        raise CliError(f"{exc}; re-apply once Kafka answers (`make up`)") from exc
    _print_refusals(result.refused)
    created = set(result.created)
    if json:
        applied = [dict(campaign_id=c.campaign_id, version=c.version, created=c.campaign_id in created)
                   for c in result.applied]
        refused = [dict(item=f.item, campaign_id=f.campaign_id, problems=f.problems) for f in result.refused]
        print(dump({"applied": applied, "refused": refused}))
    else:
        for c in result.applied:
            print(f"{'created' if c.campaign_id in created else 'updated'} campaign {c.campaign_id!r} (version {c.version})")
            for line in _derived_lines(c.campaign or {}):
                print(line)
        print(f"applied {len(result.applied)}, refused {len(result.refused)}")
    exit_with(1 if result.refused else 0)


@app.command("list", epilog=settings_epilog())
def list_(json: Annotated[bool, typer.Option("--json", help="print the campaigns (with spend) as JSON")] = False) -> None:
    """List every campaign: id, advertiser, status, bid, budget and spend today (UTC)."""
    config = settings()

    async def load(r: aioredis.Redis) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
        campaigns = await list_campaigns(config, r)
        return campaigns, await campaigns_spend(config, r, [str(c["campaign_id"]) for c in campaigns],
                                                int(time.time() * 1000))

    campaigns, spend = with_redis(config, load)
    if json:
        print(dump([dict(c, spend=spend[str(c["campaign_id"])]) for c in campaigns]))
        return
    if not campaigns:
        print(f"no campaigns (namespace {config.namespace!r}); add some with `vickrey campaigns apply FILE`")
        return
    rows = []
    for c in campaigns:
        bid, budget, cid = c.get("bid") or {}, c.get("budget") or {}, str(c["campaign_id"])
        rows.append((
            cid, str(c.get("advertiser_id")), str(c.get("status")),
            f"{bid.get('type', '?')} {money(bid.get('amount_micros'))}",
            f"{money(budget.get('daily_micros'))}/{money(budget.get('total_micros'))}",
            money(spend[cid]["today_micros"]),
        ))
    print_table(("CAMPAIGN", "ADVERTISER", "STATUS", "BID", "BUDGET DAY/TOTAL", "SPEND TODAY"), rows)
    print("(amounts in currency units; CPM bids per 1000 impressions, CPC per click)")


def _autopilot_view(latest: dict[str, Any]) -> dict[str, Any]:
    """The effective bid and targeting of the autopilot's latest decision, with its reason."""
    return {
        "effective_bid": latest["bid"],
        "keywords": latest["keywords"],
        "categories": latest["categories"],
        "last_reason": latest["reason"],
        "version": latest["version"],
        "decided_at": latest["ts"],
    }


@app.command(epilog=settings_epilog())
def show(campaign_id: CampaignId) -> None:
    """Print a stored campaign as JSON, plus its live `spend` {today_micros, total_micros} from Redis and,
    once the autopilot has decided, `autopilot` {effective_bid, keywords, categories, last_reason, version,
    decided_at}: its latest decision (effective_bid null: the autopilot sets no bid, the campaign's own
    applies)."""
    config = settings()

    async def load(r: aioredis.Redis) -> dict[str, Any] | None:
        campaign = await get_campaign(config, r, campaign_id)
        if campaign is not None:
            campaign["spend"] = await campaign_spend(config, r, campaign_id, int(time.time() * 1000))
            latest = await autopilot_history(config, r, campaign_id, limit=1)
            if latest:
                campaign["autopilot"] = _autopilot_view(latest[-1])
        return campaign

    campaign = with_redis(config, load)
    if campaign is None:
        raise CliError(f"no campaign with id {campaign_id!r} (namespace {config.namespace!r})")
    print(dump(campaign))


def _change(campaign_id: str, status: str | None) -> None:
    """Set the status of (or, with None, delete) one campaign."""
    config = settings()

    async def change(r: aioredis.Redis) -> Change | None:
        if status is None:
            return await delete_campaign(config, r, campaign_id)
        return await set_status(config, r, campaign_id, status)

    try:
        done = with_redis(config, change)
    except UnknownCampaign as exc:
        raise CliError(f"{exc} (namespace {config.namespace!r})") from exc
    except AnnounceError as exc:
        raise CliError(str(exc)) from exc
    state = status or "deleted"
    if done is None:
        print(f"campaign {campaign_id!r} is already {state}")
    else:
        print(f"campaign {campaign_id!r} is {state} (version {done.version})")


@app.command(epilog=settings_epilog())
def pause(campaign_id: CampaignId) -> None:
    """Pause a campaign: workers stop bidding with it within 1 s."""
    _change(campaign_id, "paused")


@app.command(epilog=settings_epilog())
def resume(campaign_id: CampaignId) -> None:
    """Resume a paused campaign (status active)."""
    _change(campaign_id, "active")


@app.command(epilog=settings_epilog())
def delete(campaign_id: CampaignId) -> None:
    """Delete a campaign and its budget limits; its spend history stays."""
    _change(campaign_id, None)
