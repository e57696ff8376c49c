"""`vickrey`: the command line of Vickrey (topics, campaigns, policy, advertisers, and the roles).

Every command reads its settings from the environment (core/settings.py), prints expected errors
as one line on stderr, and exits 0 on success, 1 on a refusal or failure, 2 on bad input.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from auction import worker
from auction.batching import BATCH_MAX
from autopilot.scenario import ScenarioError, read_scenario
from autopilot.simulate import simulate
from core.settings import Settings, SettingsError
from streams import runner
from streams.runner import AUTOPILOT, ROLES
from vickrey import api, reconcile, supervisor
from vickrey.cli import admin, campaigns
from vickrey.cli.common import CliError, dump, exit_with, read_json, settings, settings_epilog, with_redis

app = typer.Typer(
    name="vickrey",
    help="Vickrey: a real-time second-price ad auction for AI chat assistants, on Kafka and Redis. Set up "
    "topics, manage campaigns and the trust policy, and run the workers.\n\n"
    "First steps: make up; vickrey topics create; vickrey campaigns apply vickrey/samples/campaigns.json; "
    "vickrey run",
    epilog=settings_epilog(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.add_typer(admin.topics, name="topics", epilog=settings_epilog())
app.add_typer(campaigns.app, name="campaigns", epilog=settings_epilog())
app.add_typer(admin.policy, name="policy", epilog=settings_epilog())
app.add_typer(admin.advertisers, name="advertisers", epilog=settings_epilog())


def _at_least_one(value: int) -> int:
    if value < 1:
        raise typer.BadParameter("must be at least 1")
    return value


def _progress(message: str) -> None:
    print(f"vickrey reconcile: {message} ...", file=sys.stderr, flush=True)


def reconciled_settings() -> Settings:
    """This process's settings, after rebuilding the namespace from Kafka if it lacks the reconcile
    marker (new, or Redis was emptied): what every role does at start (docs/contract.md §9)."""
    config = settings()
    found = with_redis(config, lambda client: reconcile.ensure_reconciled(config, client, _progress))
    if found is not None:
        print(f"vickrey: namespace {config.namespace!r} rebuilt from Kafka: {orjson.dumps(found.to_json()).decode()}",
              file=sys.stderr, flush=True)
    return config


@app.command("reconcile", epilog=settings_epilog())
def reconcile_command(
    as_json: Annotated[bool, typer.Option("--json", help="print what was rebuilt as JSON on stdout")] = False,
) -> None:
    """Rebuild Redis from Kafka (docs/contract.md §9): campaigns and their budgets, the trust policy,
    advertisers' API key hashes and people's ad controls from their compacted topics, and every
    campaign's spend today and in total from billing.ledger (plus the impressions billing has not
    reached yet). Idempotent and safe while workers run: it only fills in what Redis lacks and only
    ever raises a spend counter to what the ledger proves. Workers run it at start when their
    namespace is new or was emptied."""
    config = settings()
    report = with_redis(config, lambda client: reconcile.reconcile(config, client, progress=_progress))
    summary = report.to_json()
    if as_json:
        print(dump(summary))
        return
    print(f"policy restored: {'yes' if report.policy_restored else 'no (Redis had it, or none was applied)'}")
    print(f"advertisers restored: {report.advertisers_restored}")
    print(f"people's controls restored: {report.people_restored}")
    print(f"campaigns: {report.campaigns_on_topic} on the topic, {report.campaigns_restored} put back, "
          f"{report.budgets_restored} budgets put back")
    print(f"ledger entries read: {report.ledger_entries}; impressions not yet billed: {report.unbilled_impressions}")
    raised = summary["spend_raised_micros"]
    print(f"spend raised for {len(report.spend_raised)} campaigns: +{raised['today']} micros today, "
          f"+{raised['total']} in total")
    print(f"clicks remembered as billed: {report.clicks_remembered}")
    if report.unreadable:
        print(f"unreadable records skipped (no charge): {report.unreadable}")
    print(f"done in {report.seconds:.1f} s")


@app.command(epilog=settings_epilog())
def auction(
    workers: Annotated[int, typer.Option(metavar="N", help="worker processes, supervised", callback=_at_least_one)] = 1,
    batch_max: Annotated[int, typer.Option(metavar="N", help="events per batch and Kafka transaction at most",
                                           callback=_at_least_one)] = BATCH_MAX,
    linger_ms: Annotated[int, typer.Option(metavar="MS", help="extra wait for a fuller batch when no commit is in "
                                           "flight (0: a batch fills while the previous one commits)")] = 0,
    instance: Annotated[str | None, typer.Option(metavar="NAME", help="stable name of this worker (its transactional "
                                                 "id and static group member id): a restarted worker with the same "
                                                 "name takes over at once; default host-pid")] = None,
) -> None:
    """Run the auction worker: chat.intents in batches → auctions → ad.decisions and ad.impressions in
    Kafka transactions (and people's user.controls). Scale out by running more of them."""
    config = reconciled_settings()
    if workers > 1:
        exit_with(supervisor.run_auction_workers(config, workers, instance, batch_max, linger_ms))
    else:
        exit_with(worker.main(config, instance, batch_max, linger_ms))


@app.command(epilog=settings_epilog())
def streams(
    roles: Annotated[list[str] | None, typer.Argument(
        metavar="ROLE", help=f"any of {', '.join(ROLES)} (default all of these), or autopilot alone",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="reporting HTTP port (default 8081, or a free one when 8081 is "
                                             "taken; 0 picks a free one)")] = None,
) -> None:
    """Run stream roles: click attribution, billing (exactly once), reporting (one-minute windows), CTR
    feedback, the autopilot's feed and conversions, on the shared exactly-once loop; with no ROLE, all of them.
    `vickrey streams autopilot` runs the autopilot (bids and learned targeting, on Faust) in a
    process of its own."""
    if roles and AUTOPILOT in roles:
        if len(roles) > 1:
            raise typer.BadParameter("autopilot runs in a process of its own: vickrey streams autopilot",
                                     param_hint="ROLE")
        from streams import autopilot  # Faust is imported only by the process that runs it

        exit_with(autopilot.main(reconciled_settings()))
        return
    unknown = [role for role in roles or () if role not in ROLES]
    if unknown:
        raise typer.BadParameter(f"unknown role {unknown[0]!r} (choose from {', '.join(ROLES)} or {AUTOPILOT})",
                                 param_hint="ROLE")
    exit_with(runner.main(reconciled_settings(), roles or ROLES, port))


@app.command(epilog=settings_epilog())
def run(no_streams: Annotated[bool, typer.Option("--no-streams", help="run only the auction worker")] = False) -> None:
    """Run the auction worker and the stream roles under one supervisor (dev and demo): a child that
    dies is restarted."""
    exit_with(supervisor.run_everything(reconciled_settings(), streams=not no_streams))


@app.command("api", epilog=settings_epilog())
def serve_api(port: Annotated[int, typer.Option(help="HTTP port")] = 8080) -> None:
    """Serve the advertiser HTTP API and dashboard (aggregates only)."""
    exit_with(api.main(reconciled_settings(), port))


@app.command("simulate")
def simulate_command(
    scenario: Annotated[str, typer.Argument(metavar="SCENARIO", help="scenario JSON file, or - for standard input")],
) -> None:
    """Run a market day in simulated time through the same code that runs live (engine, pricing,
    pacing, budgets' rules, CTR learning, derived targeting, the autopilot's decisions) and print one
    JSON object: per campaign impressions, clicks, spend and spend by hour (docs/contract.md §7).
    Deterministic for a seed; needs no Kafka or Redis. A scenario with problems is refused, every
    problem named (exit 2)."""
    try:
        parsed = read_scenario(read_json(scenario))
    except ScenarioError as exc:
        raise CliError("refused scenario: " + "; ".join(exc.problems), 2) from exc
    with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed}/{task.total} h"),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("hours", total=parsed.hours)
        result = simulate(parsed, lambda hours: bar.update(task, completed=hours))
    print(orjson.dumps(result).decode())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["topics"], ["campaigns"], ["policy"], ["advertisers"], ["reconcile"]):
        # management commands report failures themselves, in one line; keep client libraries quiet
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        app(args=args, prog_name="vickrey")  # typer exits with the command's code, 2 for bad usage
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CliError as exc:
        print(f"vickrey: error: {exc}", file=sys.stderr)
        return exc.code
    except SettingsError as exc:
        print(f"vickrey: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
