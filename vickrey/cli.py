"""`vickrey`: the command line of Vickrey (topics, campaigns, policy, and the worker roles).

Every command reads its settings from the environment (`Settings.from_env()`), prints expected
errors as one line on stderr, and exits 0 on success, 1 on a refusal or failure, 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from aiokafka.errors import KafkaConnectionError, KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from vickrey.campaign_store import (
    AnnounceError,
    UnknownCampaign,
    apply_campaigns,
    campaign_spend,
    campaigns_spend,
    delete_campaign,
    get_campaign,
    list_campaigns,
    set_status,
)
from vickrey.policy_store import InvalidPolicy, apply_policy, get_policy
from vickrey.settings import TOPICS, Settings
from vickrey.topics import create_topics, describe_topics

T = TypeVar("T")
UP_HINT = "Is it running? `make up` starts local Kafka and Redis."
STREAM_ROLES = ("attribution", "billing", "reporting", "feedback")
SETTINGS_HELP = {
    "kafka": "VICKREY_KAFKA          Kafka bootstrap servers (default 127.0.0.1:9092)",
    "redis": "VICKREY_REDIS          Redis URL (default redis://127.0.0.1:6379/0)",
    "prefix": "VICKREY_TOPIC_PREFIX   prefix of every Kafka topic name (default empty)",
    "ns": "VICKREY_NAMESPACE      prefix of every Redis key (default vickrey)",
    "partitions": "VICKREY_PARTITIONS     partitions of newly created topics (default 6)",
    "increment": "VICKREY_PRICE_INCREMENT_MICROS  added to a second price set by a rival bid (default 10000)",
    "metrics": "VICKREY_METRICS_PORT   Prometheus metrics port (default 9400; 0 = any free port)",
}
ALL_SETTINGS = tuple(SETTINGS_HELP)


class CliError(Exception):
    """An expected failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _epilog(*which: str) -> str:
    return "settings (environment, all optional):\n  " + "\n  ".join(SETTINGS_HELP[w] for w in which)


def _safe_url(url: str) -> str:
    """The Redis URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _run(settings: Settings, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning unreachable or failing services into one clear CliError."""
    try:
        return asyncio.run(coro)
    except RedisConnectionError as exc:
        raise CliError(
            f"cannot connect to Redis at {_safe_url(settings.redis)} (VICKREY_REDIS): {exc} {UP_HINT}"
        ) from exc
    except RedisError as exc:
        raise CliError(f"Redis at {_safe_url(settings.redis)} (VICKREY_REDIS) failed: {exc}") from exc
    except KafkaConnectionError as exc:
        raise CliError(f"cannot connect to Kafka at {settings.kafka} (VICKREY_KAFKA). {UP_HINT}") from exc
    except (TimeoutError, KafkaError) as exc:
        detail = str(exc) or type(exc).__name__
        raise CliError(f"Kafka at {settings.kafka} (VICKREY_KAFKA) failed: {detail}. {UP_HINT}") from exc


def _redis(settings: Settings, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """`_run` fn with a Redis client for `settings.redis`, closed afterwards."""

    async def call() -> T:
        r = aioredis.Redis.from_url(settings.redis, socket_connect_timeout=5, socket_timeout=15)
        try:
            return await fn(r)
        finally:
            await r.aclose()

    return _run(settings, call())


def _read_json(path: str) -> Any:
    """Parse FILE (or standard input for `-`); CliError with exit code 2 when unreadable."""
    name = "standard input" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror or exc}", 2) from exc
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CliError(
            f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", 2
        ) from exc


def _money(micros: int | None) -> str:
    """Micros as currency units, exactly (at least 2 decimals): 2500000 → 2.50."""
    if micros is None:
        return "-"
    sign, units, frac = "-" if micros < 0 else "", abs(micros) // 1_000_000, abs(micros) % 1_000_000
    decimals = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{units}.{decimals}"


def _dump(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()


# ---- topics ---------------------------------------------------------------------------------------


def cmd_topics_create(settings: Settings, args: argparse.Namespace) -> int:
    report = _run(settings, create_topics(settings))
    for name in report.created:
        print(f"created  {name} ({settings.partitions} partitions)")
    for name in report.existing:
        print(f"existing {name} (left alone)")
    print(f"created {len(report.created)}, existing {len(report.existing)}")
    return 0


def cmd_topics_list(settings: Settings, args: argparse.Namespace) -> int:
    infos = _run(settings, describe_topics(settings))
    width = max(len(i.name) for i in infos)
    for info in infos:
        state = (
            f"{info.partitions} partitions, cleanup.policy={info.cleanup_policy}"
            if info.exists
            else "missing"
        )
        print(f"{info.name:<{width}}  {state}")
    missing = sum(not i.exists for i in infos)
    if missing:
        print(f"{missing} of {len(TOPICS)} topics missing: run `vickrey topics create`", file=sys.stderr)
    return 0


# ---- campaigns ------------------------------------------------------------------------------------


def cmd_campaigns_apply(settings: Settings, args: argparse.Namespace) -> int:
    data = _read_json(args.file)
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        items = [data]
    else:
        raise CliError("expected a JSON object (one campaign) or a list of campaign objects", 2)
    try:
        result = _redis(settings, lambda r: apply_campaigns(settings, r, items))
    except AnnounceError as exc:
        raise CliError(f"{exc}; re-apply once Kafka answers (`make up`)") from exc
    for ref in result.refused:
        label = f"campaign {ref.campaign_id!r}" if ref.campaign_id is not None else "campaign"
        print(f"refused {label} (item {ref.item}): {'; '.join(ref.problems)}", file=sys.stderr)
    created = set(result.created)
    if args.json:
        applied = [
            dict(campaign_id=c.campaign_id, version=c.version, created=c.campaign_id in created)
            for c in result.applied
        ]
        refused = [dict(item=f.item, campaign_id=f.campaign_id, problems=f.problems) for f in result.refused]
        print(_dump({"applied": applied, "refused": refused}))
    else:
        for c in result.applied:
            verb = "created" if c.campaign_id in created else "updated"
            print(f"{verb} campaign {c.campaign_id!r} (version {c.version})")
        print(f"applied {len(result.applied)}, refused {len(result.refused)}")
    return 1 if result.refused else 0


def cmd_campaigns_list(settings: Settings, args: argparse.Namespace) -> int:
    async def load(r: aioredis.Redis) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
        campaigns = await list_campaigns(settings, r)
        ids = [str(c["campaign_id"]) for c in campaigns]
        return campaigns, await campaigns_spend(settings, r, ids, int(time.time() * 1000))

    campaigns, spend = _redis(settings, load)
    if args.json:
        print(_dump([dict(c, spend=spend[str(c["campaign_id"])]) for c in campaigns]))
        return 0
    if not campaigns:
        print(
            f"no campaigns (namespace {settings.namespace!r}); add some with `vickrey campaigns apply FILE`"
        )
        return 0
    header = ("CAMPAIGN", "ADVERTISER", "STATUS", "BID", "BUDGET DAY/TOTAL", "SPEND TODAY")
    rows = [header]
    for c in campaigns:
        bid, budget = c.get("bid") or {}, c.get("budget") or {}
        cid, advertiser, status = str(c["campaign_id"]), str(c.get("advertiser_id")), str(c.get("status"))
        price = f"{bid.get('type', '?')} {_money(bid.get('amount_micros'))}"
        limits = f"{_money(budget.get('daily_micros'))}/{_money(budget.get('total_micros'))}"
        rows.append((cid, advertiser, status, price, limits, _money(spend[cid]["today_micros"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print("(amounts in currency units; CPM bids per 1000 impressions, CPC per click)")
    return 0


def cmd_campaigns_show(settings: Settings, args: argparse.Namespace) -> int:
    async def load(r: aioredis.Redis) -> dict[str, Any] | None:
        campaign = await get_campaign(settings, r, args.campaign_id)
        if campaign is not None:
            campaign["spend"] = await campaign_spend(settings, r, args.campaign_id, int(time.time() * 1000))
        return campaign

    campaign = _redis(settings, load)
    if campaign is None:
        raise CliError(f"no campaign with id {args.campaign_id!r} (namespace {settings.namespace!r})")
    print(_dump(campaign))
    return 0


def _change_command(action: str) -> Callable[[Settings, argparse.Namespace], int]:
    def command(settings: Settings, args: argparse.Namespace) -> int:
        async def change(r: aioredis.Redis) -> Any:
            if action == "delete":
                return await delete_campaign(settings, r, args.campaign_id)
            status = "paused" if action == "pause" else "active"
            return await set_status(settings, r, args.campaign_id, status)

        try:
            done = _redis(settings, change)
        except UnknownCampaign as exc:
            raise CliError(f"{exc} (namespace {settings.namespace!r})") from exc
        except AnnounceError as exc:
            raise CliError(str(exc)) from exc
        state = {"pause": "paused", "resume": "active", "delete": "deleted"}[action]
        if done is None:
            print(f"campaign {args.campaign_id!r} is already {state}")
        else:
            print(f"campaign {args.campaign_id!r} is {state} (version {done.version})")
        return 0

    return command


# ---- policy ---------------------------------------------------------------------------------------


def cmd_policy_show(settings: Settings, args: argparse.Namespace) -> int:
    print(_dump(_redis(settings, lambda r: get_policy(settings, r))))
    return 0


def cmd_policy_apply(settings: Settings, args: argparse.Namespace) -> int:
    data = _read_json(args.file)
    try:
        _policy, version = _redis(settings, lambda r: apply_policy(settings, r, data))
    except InvalidPolicy as exc:
        raise CliError(f"refused policy: {'; '.join(exc.problems)}") from exc
    print(f"applied policy (version {version}); workers pick it up within 1 s")
    return 0


# ---- advertisers ----------------------------------------------------------------------------------


def cmd_advertisers_create(settings: Settings, args: argparse.Namespace) -> int:
    from vickrey.advertisers import AdvertiserError, create_advertiser

    try:
        advertiser, key = _redis(settings, lambda r: create_advertiser(settings, r, args.name))
    except AdvertiserError as exc:
        raise CliError(str(exc), 2) from exc
    if args.json:
        print(_dump({"advertiser_id": advertiser.advertiser_id, "name": advertiser.name, "api_key": key}))
    else:
        print(f"created advertiser {advertiser.advertiser_id!r} ({advertiser.name})")
        print(f"API key, shown only now (only its SHA-256 is stored): {key}")
    return 0


def cmd_advertisers_list(settings: Settings, args: argparse.Namespace) -> int:
    from vickrey.advertisers import list_advertisers

    found = _redis(settings, lambda r: list_advertisers(settings, r))
    if args.json:
        print(_dump([{"advertiser_id": a.advertiser_id, "name": a.name, "created_ms": a.created_ms, "keys": n}
                     for a, n in found]))  # fmt: skip
        return 0
    if not found:
        print(f"no advertisers (namespace {settings.namespace!r}); add one with `vickrey advertisers create NAME`")
        return 0
    rows = [("ADVERTISER", "NAME", "KEYS", "CREATED (UTC)")]
    for a, n in found:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(a.created_ms / 1000))
        rows.append((a.advertiser_id, a.name, str(n), created))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


# ---- roles ----------------------------------------------------------------------------------------


def _role(module: str, what: str) -> Callable[[Settings, argparse.Namespace], int]:
    def command(settings: Settings, args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                raise CliError(
                    f"{what} is not available yet: module {module} is missing from this checkout"
                ) from exc
            raise CliError(f"{what} cannot start: {exc} (run `make venv`)") from exc
        entry = getattr(mod, "main", None)
        if entry is None:
            raise CliError(f"{what} is not available yet: {module} has no main(settings, args)")
        result = entry(settings, args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)

    return command


# ---- parser ---------------------------------------------------------------------------------------

Handler = Callable[[Settings, argparse.Namespace], int]
Arg = tuple[str, dict[str, Any]]


def _opt(flag: str, helptext: str, **options: Any) -> Arg:
    return flag, {"help": helptext, **options}


FILE_ARG = _opt("file", "JSON file, or - for standard input", metavar="FILE")
ID_ARG = _opt("campaign_id", "the campaign_id", metavar="ID")
STORE = ("redis", "ns", "kafka", "prefix")

# (command path, one-line help, description, handler, settings that apply, arguments)
# fmt: off
COMMANDS: tuple[tuple[str, str, str, Handler | None, tuple[str, ...], tuple[Arg, ...]], ...] = (
    ("topics", "create or list the Kafka topics", "Manage the Kafka topics of this stack.",
     None, ("kafka", "prefix", "partitions"), ()),
    ("topics create", "create every topic (idempotent)",
     f"Create every Vickrey topic ({len(TOPICS)} of them), named VICKREY_TOPIC_PREFIX + name, with\n"
     "VICKREY_PARTITIONS partitions and replication 1; `campaigns` is compacted. Topics that already\n"
     "exist are left alone and reported.",
     cmd_topics_create, ("kafka", "prefix", "partitions"), ()),
    ("topics list", "show each topic's partitions and cleanup policy, or that it is missing",
     "Describe every Vickrey topic of this prefix.", cmd_topics_list, ("kafka", "prefix"), ()),
    ("campaigns", "apply, list, show, pause, resume or delete campaigns",
     "Manage advertisers' campaigns (stored in Redis, announced on the `campaigns` topic).\n"
     "Running workers see every change within 1 s, without a restart.", None, STORE, ()),
    ("campaigns apply", "validate and upsert campaigns from a JSON file",
     "Validate and upsert campaigns from FILE (`-` for standard input): one JSON object or a list.\n"
     "An invalid campaign is refused whole, every problem named on stderr, and so is one in a\n"
     "vertical the policy restricts; the valid ones are stored, in one transaction.\n"
     "Exit code: 0 all applied, 1 some refused (the others are stored), 2 unreadable input.",
     cmd_campaigns_apply, STORE,
     (FILE_ARG, _opt("--json", "print the result as JSON on stdout", action="store_true"))),
    ("campaigns list", "table of campaigns with today's spend",
     "List every campaign: id, advertiser, status, bid, budget and spend today (UTC).",
     cmd_campaigns_list, ("redis", "ns"),
     (_opt("--json", "print the campaigns (with spend) as JSON", action="store_true"),)),
    ("campaigns show", "print one campaign as JSON with its live spend",
     "Print a stored campaign as JSON, plus its live `spend` {today_micros, total_micros} from Redis.",
     cmd_campaigns_show, ("redis", "ns"), (ID_ARG,)),
    ("campaigns pause", "pause a campaign", "Pause a campaign: workers stop bidding with it within 1 s.",
     _change_command("pause"), STORE, (ID_ARG,)),
    ("campaigns resume", "resume a paused campaign", "Resume a paused campaign (status active).",
     _change_command("resume"), STORE, (ID_ARG,)),
    ("campaigns delete", "delete a campaign",
     "Delete a campaign and its budget limits; its spend history stays.",
     _change_command("delete"), STORE, (ID_ARG,)),
    ("policy", "show or change the trust policy",
     "The trust policy (DESIGN §4b): sensitive topics, restricted verticals, blocked safety labels.",
     None, ("redis", "ns"), ()),
    ("policy show", "print the policy in force as JSON",
     "Print the policy in force (the default policy when none was applied); the output can be\n"
     "edited and applied again.", cmd_policy_show, ("redis", "ns"), ()),
    ("policy apply", "validate and replace the policy from a JSON file",
     "Validate the policy in FILE (`-` for standard input) and replace the policy in force; every\n"
     "problem is named when it is refused. Workers pick it up within 1 s.",
     cmd_policy_apply, ("redis", "ns"), (FILE_ARG,)),
    ("advertisers", "create advertisers (API keys) or list them",
     "Advertisers of the HTTP API (`vickrey api`): each has an id and API keys, of which only\n"
     "SHA-256 hashes are stored.", None, ("redis", "ns"), ()),
    ("advertisers create", "create an advertiser and print its API key once",
     "Create an advertiser named NAME, with the id adv-<slug of NAME> (-2, -3, ... appended when\n"
     "taken), and print a new API key. The key is shown only this once: only its hash is stored.",
     cmd_advertisers_create, ("redis", "ns"),
     (_opt("name", "the advertiser's display name", metavar="NAME"),
      _opt("--json", "print {advertiser_id, name, api_key} as JSON", action="store_true"))),
    ("advertisers list", "table of advertisers with their number of keys",
     "List every advertiser: id, name, number of API keys, creation time.", cmd_advertisers_list,
     ("redis", "ns"), (_opt("--json", "print the advertisers as JSON", action="store_true"),)),
    ("auction", "run auction workers (chat.intents -> ad.decisions, ad.impressions)",
     "Run the auction worker: consumes chat.intents in batches, runs the auctions and produces\n"
     "ad.decisions and ad.impressions in Kafka transactions. Scale out by running more of them.",
     _role("auction.worker", "vickrey auction"), ALL_SETTINGS,
     (_opt("--workers", "worker processes (default 1)", type=int, default=1, metavar="N"),
      _opt("--batch-max", "max events per batch and Kafka transaction (default 2000)", type=int, default=2000, metavar="N"),
      _opt("--linger-ms", "extra wait for a fuller batch when no commit is in flight, in ms (default 0: a batch fills while the previous one commits)", type=int, default=0, metavar="MS"),
      _opt("--instance", "stable name of this worker (its transactional id and static group member id):\n"
           "a restarted worker with the same name takes over at once; default: host-pid",
           default=None, metavar="NAME"))),
    ("streams", "run stream processors (attribution, billing, reporting, feedback)",
     "Run stream processing roles: click attribution, billing (exactly once), reporting\n"
     "(one-minute windows) and CTR feedback. With no ROLE, all of them.",
     _role("streams.runner", "vickrey streams"), ALL_SETTINGS,
     (_opt("roles", f"one of {', '.join(STREAM_ROLES)} (default all)", nargs="*", metavar="ROLE"),
      _opt("--port", "reporting HTTP port (default 8081, or a free one when 8081 is taken; 0 picks a free one)",
           type=int, default=None))),
    ("run", "run every worker in one supervised process group (dev and demo)",
     "Run the auction worker and the stream processors under one supervisor.",
     _role("vickrey.supervisor", "vickrey run"), ALL_SETTINGS,
     (_opt("--no-streams", "run only the auction worker", action="store_true"),)),
    ("api", "serve the advertiser HTTP API (aggregates only)",
     "Serve the advertiser HTTP API: campaign reports, aggregates only.",
     _role("vickrey.api", "vickrey api"), STORE,
     (_opt("--port", "HTTP port (default 8080)", type=int, default=8080),)),
)
# fmt: on


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="vickrey",
        formatter_class=fmt,
        epilog=_epilog(*ALL_SETTINGS),
        description="Vickrey: a real-time second-price ad auction for AI chat assistants, on Kafka and\n"
        "Redis. Set up topics, manage campaigns and the trust policy, and run the workers.\n\n"
        "first steps: make up; vickrey topics create;\n"
        "  vickrey campaigns apply vickrey/samples/campaigns.json; vickrey run\n"
        "`vickrey COMMAND --help` explains each command.",
    )
    groups: dict[str, Any] = {}  # command path -> its subparsers
    groups[""] = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for path, helptext, description, handler, env, arguments in COMMANDS:
        parent, _, name = path.rpartition(" ")
        p = groups[parent].add_parser(
            name, help=helptext, description=description, epilog=_epilog(*env), formatter_class=fmt
        )
        if handler is None:
            groups[path] = p.add_subparsers(dest="action", metavar="ACTION", required=True)
        else:
            p.set_defaults(func=handler)
        for flag, options in arguments:
            p.add_argument(flag, **options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "streams":
        unknown = [r for r in args.roles if r not in STREAM_ROLES]
        if unknown:
            parser.error(f"streams: unknown role {unknown[0]!r} (choose from {', '.join(STREAM_ROLES)})")
        args.roles = args.roles or list(STREAM_ROLES)
    for option in ("workers", "batch_max"):
        if getattr(args, option, 1) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.command in ("topics", "campaigns", "policy"):
        # management commands report failures themselves, in one line; keep client libraries quiet
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        settings = Settings.from_env()
    except SystemExit as exc:
        print(f"vickrey: error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(settings, args))
    except CliError as exc:
        print(f"vickrey: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
