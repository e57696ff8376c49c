"""`vickrey topics …`, `vickrey policy …`, `vickrey advertisers …`."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from core.topics import TOPICS, create_topics, describe_topics
from vickrey.advertisers import AdvertiserError, KeyNotAnnounced, create_advertiser, list_advertisers
from vickrey.announce import AnnounceError
from vickrey.cli.common import (
    CliError,
    dump,
    print_table,
    read_json,
    run,
    settings,
    settings_epilog,
    with_redis,
)
from vickrey.policy_store import InvalidPolicy, apply_policy, get_policy

topics = typer.Typer(help="Create or list the Kafka topics of this stack.", no_args_is_help=True)
policy = typer.Typer(
    help="The trust policy (docs/contract.md §4b): sensitive topics, restricted verticals, blocked safety labels.",
    no_args_is_help=True,
)
advertisers = typer.Typer(
    help="Advertisers of the HTTP API (`vickrey api`): each has an id and API keys, of which only SHA-256 "
    "hashes are stored.",
    no_args_is_help=True,
)
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON on stdout")]


@topics.command("create", epilog=settings_epilog())
def topics_create() -> None:
    """Create every Vickrey topic, named VICKREY_TOPIC_PREFIX + name, with VICKREY_PARTITIONS partitions
    and one replica per broker up to three (min.insync.replicas 2 with three); the topics of the latest
    state per key (`campaigns`, `campaigns.autopilot`, `policy`, `advertisers`, `user.controls.state`)
    are compacted. Topics that already exist are left alone and reported."""
    config = settings()
    report = run(config, create_topics(config))
    for name in report.created:
        print(f"created  {name} ({config.partitions} partitions)")
    for name in report.existing:
        print(f"existing {name} (left alone)")
    print(f"created {len(report.created)}, existing {len(report.existing)}")


@topics.command("list", epilog=settings_epilog())
def topics_list() -> None:
    """Describe every Vickrey topic of this prefix: partitions, replicas, min.insync.replicas and cleanup
    policy, or that it is missing."""
    config = settings()
    infos = run(config, describe_topics(config))
    print_table(("TOPIC", "STATE"), [
        (info.name, f"{info.partitions} partitions, {info.replicas} replicas, "
                    f"min.insync.replicas={info.min_insync_replicas}, cleanup.policy={info.cleanup_policy}"
         if info.exists else "missing")
        for info in infos
    ])
    missing = sum(not info.exists for info in infos)
    if missing:
        print(f"{missing} of {len(TOPICS)} topics missing: run `vickrey topics create`", file=sys.stderr)


@policy.command("show", epilog=settings_epilog())
def policy_show() -> None:
    """Print the policy in force as JSON (the default policy when none was applied); the output can be
    edited and applied again."""
    config = settings()
    print(dump(with_redis(config, lambda r: get_policy(config, r))))


@policy.command("apply", epilog=settings_epilog())
def policy_apply(file: Annotated[str, typer.Argument(metavar="FILE", help="JSON file, or - for standard input")]) -> None:
    """Validate the policy in FILE (`-` for standard input) and replace the policy in force; every problem
    is named when it is refused. Workers pick it up within 1 s."""
    config = settings()
    data = read_json(file)
    try:
        _policy, version = with_redis(config, lambda r: apply_policy(config, r, data))
    except InvalidPolicy as exc:
        raise CliError(f"refused policy: {'; '.join(exc.problems)}") from exc
    except AnnounceError as exc:
        raise CliError(f"{exc}; apply it again once Kafka answers (`make up`)") from exc
    print(f"applied policy (version {version}); workers pick it up within 1 s")


@advertisers.command("create", epilog=settings_epilog())
def advertisers_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="the advertiser's display name")],
    json: Annotated[bool, typer.Option("--json", help="print {advertiser_id, name, api_key} as JSON")] = False,
) -> None:
    """Create an advertiser named NAME, with the id adv-SLUG (SLUG: NAME in lowercase letters, digits and dashes; -2, -3, ... appended when taken),
    and print a new API key. The key is shown only this once: only its hash is stored."""
    config = settings()
    try:
        advertiser, key = with_redis(config, lambda r: create_advertiser(config, r, name))
    except AdvertiserError as exc:
        raise CliError(str(exc), 2) from exc
    except KeyNotAnnounced as exc:  # created, and the key works: hand it over, then fail loudly
        print(f"API key of {exc.advertiser.advertiser_id}, shown only now: {exc.api_key}")
        raise CliError(str(exc)) from exc
    if json:
        print(dump({"advertiser_id": advertiser.advertiser_id, "name": advertiser.name, "api_key": key}))
    else:
        print(f"created advertiser {advertiser.advertiser_id!r} ({advertiser.name})")
        print(f"API key, shown only now (only its SHA-256 is stored): {key}")


@advertisers.command("list", epilog=settings_epilog())
def advertisers_list(json: AsJson = False) -> None:
    """List every advertiser: id, name, number of API keys, creation time."""
    config = settings()
    found = with_redis(config, lambda r: list_advertisers(config, r))
    if json:
        print(dump([{"advertiser_id": a.advertiser_id, "name": a.name, "created_ms": a.created_ms, "keys": n}
                    for a, n in found]))
        return
    if not found:
        print(f"no advertisers (namespace {config.namespace!r}); add one with `vickrey advertisers create NAME`")
        return
    print_table(("ADVERTISER", "NAME", "KEYS", "CREATED (UTC)"), [
        (a.advertiser_id, a.name, str(n), time.strftime("%Y-%m-%d %H:%M", time.gmtime(a.created_ms / 1000)))
        for a, n in found
    ])
