"""The CLI without services: help everywhere, one-line errors, lazily imported roles."""

from __future__ import annotations

import argparse

import pytest

from tests.vickrey.conftest import run_cli
from vickrey import cli
from vickrey.campaign_store import encode_campaign, utc_day
from vickrey.settings import Settings

COMMANDS = [
    [],
    ["topics"],
    ["topics", "create"],
    ["topics", "list"],
    ["campaigns"],
    ["campaigns", "apply"],
    ["campaigns", "list"],
    ["campaigns", "show"],
    ["campaigns", "pause"],
    ["campaigns", "resume"],
    ["campaigns", "delete"],
    ["policy"],
    ["policy", "show"],
    ["policy", "apply"],
    ["auction"],
    ["streams"],
    ["run"],
    ["api"],
    ["advertisers"],
    ["advertisers", "create"],
    ["advertisers", "list"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "vickrey")
def test_help_for_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vickrey")
    assert "VICKREY_" in out  # every page says which settings apply


def test_every_subcommand_is_covered() -> None:
    parser = cli.build_parser()
    found: list[list[str]] = []

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        found.append(path)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*path, name])

    walk(parser, [])
    assert sorted(found) == sorted(COMMANDS)


def test_help_through_the_console_script(env: dict[str, str]) -> None:
    result = run_cli(env, "campaigns", "apply", "--help")
    assert result.returncode == 0 and "Exit code" in result.stdout


def test_unreachable_services_are_one_line(env: dict[str, str]) -> None:
    no_kafka = run_cli(dict(env, VICKREY_KAFKA="127.0.0.1:1"), "topics", "create")
    assert no_kafka.returncode == 1
    assert no_kafka.stderr.strip().splitlines() == [
        "vickrey: error: cannot connect to Kafka at 127.0.0.1:1 (VICKREY_KAFKA). "
        "Is it running? `make up` starts local Kafka and Redis."
    ]
    no_redis = run_cli(dict(env, VICKREY_REDIS="redis://:hunter2@127.0.0.1:1/0"), "campaigns", "list")
    assert no_redis.returncode == 1
    lines = no_redis.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to Redis at redis://:***@127.0.0.1:1/0" in lines[0]
    assert "make up" in lines[0] and "hunter2" not in lines[0]


def test_bad_setting_is_reported(env: dict[str, str]) -> None:
    result = run_cli(dict(env, VICKREY_PARTITIONS="many"), "topics", "list")
    assert (
        result.returncode == 2 and "VICKREY_PARTITIONS" in result.stderr and "Traceback" not in result.stderr
    )


def test_missing_role_module_is_a_clear_error() -> None:
    command = cli._role("vickrey_no_such_package.worker", "the frobnicator")
    with pytest.raises(
        cli.CliError, match="the frobnicator is not available yet: module vickrey_no_such_package.worker"
    ):
        command(Settings(), argparse.Namespace())


def test_role_receives_settings_and_parsed_args(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    seen: dict[str, object] = {}

    async def fake_main(settings: Settings, args: argparse.Namespace) -> int:
        seen.update(settings=settings, args=args)
        return 3

    module = types.ModuleType("auction.worker")
    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "auction.worker", module)
    monkeypatch.setenv("VICKREY_NAMESPACE", "nsx")
    assert cli.main(["auction", "--workers", "2", "--batch-max", "100"]) == 3
    args = seen["args"]
    assert isinstance(args, argparse.Namespace)
    assert (args.workers, args.batch_max, args.linger_ms) == (2, 100, 0)
    assert isinstance(seen["settings"], Settings) and seen["settings"].namespace == "nsx"


def test_streams_roles_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["streams", "billing", "nonsense"])
    assert exit_info.value.code == 2
    assert "unknown role 'nonsense'" in capsys.readouterr().err


def test_money_and_days() -> None:
    assert cli._money(2_500_000) == "2.50"
    assert cli._money(1_234_567) == "1.234567"
    assert cli._money(0) == "0.00"
    assert cli._money(-10) == "-0.00001"
    assert utc_day(0) == "19700101"
    assert utc_day(1_700_000_000_000) == "20231114"
    assert encode_campaign({"b": 1, "a": 2}) == b'{"b":1,"a":2}'  # the validator's order is kept
    assert cli._safe_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
