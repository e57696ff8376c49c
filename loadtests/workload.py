"""Synthetic campaigns and intents for benchmarks: the workload named in the engine issue.

10,000 campaigns from 3,000 advertisers, a 5,000-keyword vocabulary whose popularity is
Zipf-like (weight ∝ 1/rank^0.8, for campaigns and events alike), 10 keywords per campaign,
3 per event, 1–3 slots, budgets and caps in force. Since the autopilot, phrase match is in the mix:
PHRASE_SHARE of the campaigns match as phrases (docs/contract.md §7), and TWO_WORD_SHARE of the
intents' keywords are two words ("kw12 kw7"), which only phrase-match campaigns reach through a
word. Seeded, so runs compare.
"""

from __future__ import annotations

import itertools
import random
import time
from bisect import bisect
from typing import Any

COUNTRIES = ("US", "GB", "DE", "FR", "JP", "IN", "BR", "CA", "AU", "ES")
LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "hi-IN", "pt-BR", "en-CA", "en-AU", "es-ES")
DEVICES = ("desktop", "mobile", "tablet")
PHRASE_SHARE = 0.1
TWO_WORD_SHARE = 0.3
CATEGORIES = ("IAB19", "IAB19-6", "IAB20", "IAB20-18", "IAB8", "IAB8-5", "IAB2", "IAB3", "IAB5", "IAB22")


class Zipf:
    """Sample ranks 0..n-1 with weight 1/(rank+1)^s."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        self.cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** s for rank in range(n)))
        self.rng = rng

    def sample(self) -> int:
        return bisect(self.cumulative, self.rng.random() * self.cumulative[-1])

    def distinct(self, k: int) -> list[int]:
        chosen: set[int] = set()
        while len(chosen) < k:
            chosen.add(self.sample())
        return sorted(chosen)


def vocabulary(n: int = 5000) -> list[str]:
    return [f"kw{rank}" for rank in range(n)]


def campaigns(
    n: int = 10_000, advertisers: int = 3_000, vocab_size: int = 5_000, seed: int = 7, tag: str = "b"
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    vocab = vocabulary(vocab_size)
    zipf = Zipf(vocab_size, 0.8, rng)
    out: list[dict[str, Any]] = []
    for i in range(n):
        cpc = rng.random() < 0.4
        record: dict[str, Any] = {
            "campaign_id": f"{tag}c{i}",
            "advertiser_id": f"{tag}a{i % advertisers}",
            "status": "active",
            "bid": {
                "type": "cpc" if cpc else "cpm",
                "amount_micros": rng.randint(100_000, 3_000_000) if cpc else rng.randint(200_000, 20_000_000),
            },
            "pctr": round(rng.uniform(0.002, 0.05), 4),
            "budget": {"daily_micros": rng.randint(50, 500) * 1_000_000, "total_micros": 10_000 * 1_000_000},
            "pacing": "even" if rng.random() < 0.3 else "asap",
            "targeting": {"keywords": [vocab[k] for k in zipf.distinct(10)]},
            "creatives": [
                {
                    "creative_id": f"{tag}c{i}-1",
                    "title": f"Offer {i}",
                    "body": "A synthetic creative for benchmarks.",
                    "url": f"https://example.com/c/{i}",
                    "cta": "Open",
                }
            ],
        }
        if rng.random() < PHRASE_SHARE:
            record["targeting"]["match"] = "phrase"
        if rng.random() < 0.3:
            record["targeting"]["countries"] = rng.sample(COUNTRIES, 3)
        if rng.random() < 0.2:
            record["frequency_cap"] = {"max": rng.randint(1, 5), "window_s": 3600}
        out.append(record)
    return out


def intents(n: int, vocab_size: int = 5_000, seed: int = 11, users: int = 50_000, tag: str = "b") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    vocab = vocabulary(vocab_size)
    zipf = Zipf(vocab_size, 0.8, rng)
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(n):
        user = f"{tag}u{rng.randrange(users)}"
        out.append(
            {
                "schema_version": 1,
                "event_id": f"{tag}e{seed}-{i}",
                "ts": now_ms,
                "user_id": user,
                "session_id": f"s-{user}",
                "placement": "chat_inline",
                "slots": rng.randint(1, 3),
                "intent": {
                    "category": rng.choice(CATEGORIES),
                    "keywords": [vocab[k] if rng.random() >= TWO_WORD_SHARE else f"{vocab[k]} {vocab[zipf.sample()]}"
                                 for k in zipf.distinct(3)],
                    "confidence": 0.8,
                },
                "locale": rng.choice(LOCALES),
                "country": rng.choice(COUNTRIES),
                "device": rng.choice(DEVICES),
                "safety": {"labels": []},
                "consent": {"ads": True, "personalization": True},
                "age_bracket": "18_plus",
            }
        )
    return out
