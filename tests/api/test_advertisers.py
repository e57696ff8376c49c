"""Advertisers and keys (vickrey.advertisers), `vickrey advertisers create|list`, `demo_key`, and
`vickrey api` serving on its port. Creating an advertiser announces it on Kafka (`advertisers`), so
those tests take `stack`, which deletes their topics afterwards."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from core.settings import Settings
from tests.api.conftest import free_port
from tests.conftest import ROOT
from tests.vickrey.conftest import run_cli, vickrey_bin
from vickrey import advertisers as adv
from vickrey.api import DEMO_ADVERTISER_ID, demo_key

pytestmark = pytest.mark.integration


def test_slug() -> None:
    assert adv.slug("Café Röst & Co.") == "cafe-rost-co"
    assert adv.slug("  ADV-VoltBook  ") == "voltbook"
    assert adv.slug("日本") == ""
    assert len(adv.slug("x" * 500)) == adv.SLUG_MAX


async def test_ids_are_unique_slugs_and_only_key_hashes_are_stored(
    settings: Settings, stack: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    first, key1 = await adv.create_advertiser(settings, aredis, "Acme Inc.")
    second, key2 = await adv.create_advertiser(settings, aredis, "ACME inc")
    assert (first.advertiser_id, second.advertiser_id) == ("adv-acme-inc", "adv-acme-inc-2")
    assert adv.KEY_PATTERN.fullmatch(key1) and key1 != key2
    with pytest.raises(adv.AdvertiserError, match="taken"):
        await adv.create_advertiser(settings, aredis, "Other", advertiser_id="adv-acme-inc")
    with pytest.raises(adv.AdvertiserError, match="name"):
        await adv.create_advertiser(settings, aredis, "   ")

    stored: Any = redis_client.hgetall(settings.keys.advertisers())
    for advertiser in (first, second):
        stored[advertiser.advertiser_id] = redis_client.get(
            settings.keys.advertiser(advertiser.advertiser_id)
        )
    dump = repr(stored).encode()
    assert key1.encode() not in dump and key2.encode() not in dump  # only hashes are kept
    assert adv.hash_key(key1).encode() in dump and adv.hash_key(key2).encode() in dump

    assert await adv.authenticate(settings, aredis, key1) == first
    assert await adv.authenticate(settings, aredis, key1[:-1] + ("A" if key1[-1] != "A" else "B")) is None
    assert await adv.authenticate(settings, aredis, "not a key") is None
    key3 = await adv.add_key(settings, aredis, first.advertiser_id)
    assert await adv.authenticate(settings, aredis, key3) == first
    listed = await adv.list_advertisers(settings, aredis)
    assert [(a.advertiser_id, n) for a, n in listed] == [("adv-acme-inc", 2), ("adv-acme-inc-2", 1)]


async def test_concurrent_creates_get_distinct_ids(
    settings: Settings, stack: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    made = await asyncio.gather(*(adv.create_advertiser(settings, aredis, "Same Name") for _ in range(8)))
    assert len({a.advertiser_id for a, _ in made}) == 8


def test_cli_create_prints_the_key_once_and_list_never(
    env: dict[str, str], settings: Settings, stack: Settings, redis_client: redis.Redis
) -> None:
    created = run_cli(env, "advertisers", "create", "Bike Shed")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1].split()[-1]
    assert "adv-bike-shed" in created.stdout and adv.KEY_PATTERN.fullmatch(key)
    as_json = run_cli(env, "advertisers", "create", "Bike Shed", "--json")
    assert json.loads(as_json.stdout)["advertiser_id"] == "adv-bike-shed-2"

    listed = run_cli(env, "advertisers", "list")
    assert listed.returncode == 0 and "adv-bike-shed" in listed.stdout and "vk_" not in listed.stdout
    rows = json.loads(run_cli(env, "advertisers", "list", "--json").stdout)
    assert [(r["advertiser_id"], r["keys"]) for r in rows] == [("adv-bike-shed", 1), ("adv-bike-shed-2", 1)]
    bad = run_cli(env, "advertisers", "create", "!!!")
    assert bad.returncode == 2 and "name:" in bad.stderr


async def test_demo_key_gives_working_keys_of_the_demo_advertiser(
    settings: Settings, stack: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    first = demo_key(settings)  # called inside a running loop: it runs in a thread
    second = await asyncio.to_thread(demo_key, settings)  # and outside one
    assert first != second
    for key in (first, second):
        owner = await adv.authenticate(settings, aredis, key)
        assert owner is not None and owner.advertiser_id == DEMO_ADVERTISER_ID


def test_vickrey_api_serves_on_its_port(env: dict[str, str], redis_client: redis.Redis) -> None:
    port = free_port()
    proc = subprocess.Popen([*vickrey_bin(), "api", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        body: Any = None
        deadline = time.monotonic() + 30
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    body = json.loads(resp.read())
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.2)
        assert body == {"status": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5) as resp:
            assert json.loads(resp.read())["openapi"] == "3.1.0"
        taken = run_cli(env, "api", "--port", str(port))  # the port is in use: a clear error, exit 1
        assert taken.returncode == 1 and f"cannot serve on 0.0.0.0:{port}" in taken.stderr, taken.stderr
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out, (out, err)
