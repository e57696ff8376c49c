"""The click-attribution table: recent impressions and click verdicts in a local RocksDB (rocksdict),
so a restart on the same host remembers them, and a restore from Kafka for partitions that come
from elsewhere (the input topic is the changelog, as in Kafka Streams' source-topic tables).

Keys (raw bytes):
- `i:<impression_id>` → orjson [ts, user_id, campaign_id, advertiser_id, bid_type, price_micros,
  matched_keywords, intent_keywords] (the two lists absent in rows written before they existed)
- `k:<click_id>`      → orjson [src "<partition>:<offset>" of the raw click, reason or "valid"]
  (the first verdict, kept so that a batch replayed after a crash republishes the same answer)
- `c:<impression_id>` → click_id of the impression's billable click (a second one is a duplicate)
- `o:<topic>:<partition>` → next input offset applied to the table (restore checkpoint)
- `u:<user_id>\0<impression_id>` → empty: the person's impressions, so that `forget` finds them
- `f:<user_id>` → a person who asked to be forgotten: their impressions are not stored again
  (a restore replays the impressions topic, which still holds them)

Everything expires through RocksDB's TTL compaction a little after the attribution window; expiry
of a click is judged on event times, never on what the store still holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import orjson
from rocksdict import AccessType, Options, Rdict, WriteBatch

ROOT = Path(__file__).resolve().parent.parent
MAX_SLOTS = 64  # processes of one stack sharing a host each open their own store


def default_state_dir(topic_prefix: str) -> Path:
    """`.local/streams/<prefix>/attribution`: one tree per stack, so two stacks never mix."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", topic_prefix.rstrip(".")) or "_default"
    return ROOT / ".local" / "streams" / safe / "attribution"


@dataclass(frozen=True, slots=True)
class StoredImpression:
    ts: int
    user_id: str
    campaign_id: str
    advertiser_id: str
    bid_type: str
    price_micros: int
    matched_keywords: list[str]
    intent_keywords: list[str]

    @classmethod
    def of(cls, impression: dict[str, object]) -> bytes:
        return orjson.dumps(
            [
                impression["ts"],
                impression["user_id"],
                impression["campaign_id"],
                impression["advertiser_id"],
                impression["bid_type"],
                impression["price_micros"],
                impression.get("matched_keywords", []),
                impression.get("intent_keywords", []),
            ]
        )

    @classmethod
    def load(cls, raw: bytes) -> StoredImpression:
        ts, user_id, campaign_id, advertiser_id, bid_type, price, *keywords = orjson.loads(raw)
        matched, intent = keywords if keywords else ([], [])
        return cls(ts, user_id, campaign_id, advertiser_id, bid_type, price, matched, intent)

    @property
    def click_charge_micros(self) -> int:
        return self.price_micros if self.bid_type == "cpc" else 0


class AttributionStore:
    def __init__(self, directory: Path, ttl_s: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path, self.db = self._open_free_slot(directory, ttl_s)

    @staticmethod
    def _open_free_slot(directory: Path, ttl_s: int) -> tuple[Path, Rdict]:
        # RocksDB locks its directory: a second process of the same stack on this host takes the
        # next slot; a restarted process gets slot 0 (and its memory) back.
        last: Exception | None = None
        for slot in range(MAX_SLOTS):
            path = directory / str(slot)
            try:
                return path, Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.with_ttl(ttl_s))
            except Exception as exc:  # rocksdict raises a bare Exception for "lock hold"
                if "lock" not in str(exc).lower():
                    raise
                last = exc
        raise RuntimeError(f"every attribution store slot under {directory} is locked: {last}")

    def close(self) -> None:
        self.db.close()

    # -- impressions ---------------------------------------------------------------------------

    def put_impressions(self, impressions: list[tuple[str, str, bytes]],
                        checkpoints: dict[tuple[str, int], int]) -> None:
        """(impression_id, user_id, StoredImpression bytes) rows, but none of a forgotten person."""
        batch = WriteBatch(raw_mode=True)
        forgotten: dict[str, bool] = {}
        for impression_id, user_id, value in impressions:
            if user_id not in forgotten:
                forgotten[user_id] = self.db.get(_forgotten_key(user_id)) is not None
            if forgotten[user_id]:
                continue
            batch.put(b"i:" + impression_id.encode(), value)
            batch.put(_person_prefix(user_id) + impression_id.encode(), b"")
        for (topic, partition), offset in checkpoints.items():
            batch.put(_checkpoint_key(topic, partition), str(offset).encode())
        self.db.write(batch)

    def impression(self, impression_id: str) -> StoredImpression | None:
        raw = self.db.get(b"i:" + impression_id.encode())
        return None if raw is None else StoredImpression.load(raw)

    def has_impression(self, impression_id: str) -> bool:
        return self.db.get(b"i:" + impression_id.encode()) is not None

    # -- clicks --------------------------------------------------------------------------------

    def verdict(self, click_id: str) -> tuple[str, str] | None:
        raw = self.db.get(b"k:" + click_id.encode())
        if raw is None:
            return None
        src, reason = orjson.loads(raw)
        return str(src), str(reason)

    def set_verdict(self, click_id: str, src: str, reason: str) -> None:
        self.db.put(b"k:" + click_id.encode(), orjson.dumps([src, reason]))

    def clicked_by(self, impression_id: str) -> str | None:
        raw = self.db.get(b"c:" + impression_id.encode())
        return None if raw is None else raw.decode()

    def set_clicked(self, impression_id: str, click_id: str) -> None:
        self.db.put(b"c:" + impression_id.encode(), click_id.encode())

    # -- people --------------------------------------------------------------------------------

    def forget(self, user_id: str) -> int:
        """Erase the person's impressions (and which click each had), and keep them from coming
        back; the number of impressions erased."""
        prefix = _person_prefix(user_id)
        batch = WriteBatch(raw_mode=True)
        erased = 0
        rows = self.db.iter()
        rows.seek(prefix)
        while rows.valid() and rows.key().startswith(prefix):
            impression_id = rows.key()[len(prefix):]
            batch.delete(b"i:" + impression_id)
            batch.delete(b"c:" + impression_id)
            batch.delete(rows.key())
            erased += 1
            rows.next()
        batch.put(_forgotten_key(user_id), b"1")
        self.db.write(batch)
        return erased

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, topic: str, partition: int) -> int | None:
        raw = self.db.get(_checkpoint_key(topic, partition))
        return None if raw is None else int(raw)

    def set_checkpoint(self, topic: str, partition: int, offset: int) -> None:
        self.db.put(_checkpoint_key(topic, partition), str(offset).encode())


def _checkpoint_key(topic: str, partition: int) -> bytes:
    return f"o:{topic}:{partition}".encode()


def _person_prefix(user_id: str) -> bytes:
    return b"u:" + user_id.encode() + b"\0"


def _forgotten_key(user_id: str) -> bytes:
    return b"f:" + user_id.encode()
