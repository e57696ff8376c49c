"""What every command shares: settings, one-line errors, service calls, JSON and tables.

Exit codes: 0 success, 1 a refusal or failure, 2 bad input (a bad file, argument or setting).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from core.redis_client import redis_from_url
from core.settings import Settings, settings_help

T = TypeVar("T")


def _flags_take_no_value() -> None:
    """Typer 0.29 prints a value type after every flag in `--help` (`--json <bool>`, even
    `--help <bool>`), as if a flag took a value; a flag is shown bare, as Click shows it."""
    shown = getattr(typer.core.TyperOption, "display_type_rich", None)
    if shown is None:  # a Typer that renders help otherwise: nothing to mend (the help test looks)
        return

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()
UP_HINT = "Is it running? `make up` starts local Kafka and Redis."


class CliError(Exception):
    """An expected failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def exit_with(code: int) -> None:
    """End a command with this exit code (typer ends with 0 when a command returns)."""
    if code:
        raise typer.Exit(code)


def settings() -> Settings:
    """This process's settings (core.settings.SettingsError, exit 2, names a bad variable)."""
    return Settings.from_env()


def settings_epilog() -> str:
    """The settings every command reads, from the settings' own descriptions."""
    rows = "\n".join(f"* {name} (default {default}): {meaning}" for name, default, meaning in settings_help())
    return "Settings (environment, all optional):\n\n" + rows


def settings_markdown() -> str:
    """The README's settings table (tests/vickrey/test_cli.py keeps README.md equal to it)."""
    rows = [f"| `{name}` | `{default}` | {meaning} |" for name, default, meaning in settings_help()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


def safe_url(url: str) -> str:
    """A URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def run(config: Settings, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning unreachable or failing services into one clear CliError."""
    try:
        return asyncio.run(coro)
    except RedisConnectionError as exc:
        raise CliError(f"cannot connect to Redis at {safe_url(config.redis)} (VICKREY_REDIS): {exc} {UP_HINT}") from exc
    except RedisError as exc:
        raise CliError(f"Redis at {safe_url(config.redis)} (VICKREY_REDIS) failed: {exc}") from exc
    except KafkaConnectionError as exc:
        raise CliError(f"cannot connect to Kafka at {config.kafka} (VICKREY_KAFKA). {UP_HINT}") from exc
    except (TimeoutError, KafkaError) as exc:
        detail = str(exc) or type(exc).__name__
        raise CliError(f"Kafka at {config.kafka} (VICKREY_KAFKA) failed: {detail}. {UP_HINT}") from exc


def with_redis(config: Settings, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """`run` fn with a Redis client for `config.redis`, closed afterwards."""

    async def call() -> T:
        client = redis_from_url(config.redis, socket_connect_timeout=5, socket_timeout=15)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return run(config, call())


def read_json(path: str) -> Any:
    """Parse FILE (or standard input for `-`); CliError with exit code 2 when unreadable."""
    name = "standard input" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror or exc}", 2) from exc
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", 2) from exc


def money(micros: int | None) -> str:
    """Micros as currency units, exactly (at least 2 decimals): 2500000 → 2.50."""
    if micros is None:
        return "-"
    sign, units, frac = "-" if micros < 0 else "", abs(micros) // 1_000_000, abs(micros) % 1_000_000
    return f"{sign}{units}.{f'{frac:06d}'.rstrip('0').ljust(2, '0')}"


def dump(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Plain columns (no borders), so the output stays easy to read and to grep."""
    table = Table(*header, box=None, pad_edge=False, show_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    # Never wrap a row, whatever the terminal's width: one line per row.
    Console(width=10_000 if not sys.stdout.isatty() else None, soft_wrap=True).print(table)
