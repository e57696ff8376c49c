"""Realistic chat intent events (and campaigns that match them) for the load tests.

An intent taxonomy of IAB Content Taxonomy 1.0 categories (codes checked against
schemas/data/iab-content-taxonomy-1.0.tsv), each with the keywords a chat classifier would emit
for it; the keywords overlap those of the sample campaigns (vickrey/samples/campaigns.json) and
of `campaigns()` below, so auctions have real competition. Events come from many locales and
countries and devices; a share carries safety labels (some globally blocked), lacks ad consent,
comes from minors or touches sensitive topics; 1-3 slots; floors on some. Seeded: the same seed
gives the same stream.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from schemas.iab import IAB_CATEGORIES

# code -> (weight, keywords). Weights follow rough chat-assistant traffic: tech and travel lead.
TAXONOMY: dict[str, tuple[float, tuple[str, ...]]] = {
    "IAB19": (10, ("laptop", "laptops", "notebook", "ultrabook", "macbook", "battery life", "charger", "monitor")),
    "IAB19-6": (6, ("phone", "battery", "power bank", "usb-c", "charging", "smartphone", "screen protector")),
    "IAB19-18": (4, ("wifi", "router", "vpn", "browser", "cloud storage", "ide")),
    "IAB19-20": (3, ("javascript", "code", "debugger", "typescript", "react")),
    "IAB19-19": (2, ("java", "code", "ide", "spring", "debugger")),
    "IAB19-28": (2, ("power bank", "charger", "portable speaker", "battery")),
    "IAB20": (6, ("travel", "vacation", "itinerary", "luggage", "travel insurance")),
    "IAB20-3": (5, ("flight", "flights", "airline", "cheap flights", "layover")),
    "IAB20-14": (3, ("paris", "rome", "lisbon", "europe", "flights", "train pass")),
    "IAB20-18": (4, ("hotel", "hotels", "booking", "resort", "ryokan")),
    "IAB20-20": (3, ("tokyo", "japan", "osaka", "kyoto", "japanese", "travel phrases")),
    "IAB20-17": (2, ("weekend", "getaway", "honeymoon", "spa")),
    "IAB20-24": (1, ("spa", "massage", "wellness retreat", "weekend")),
    "IAB8": (5, ("recipe", "dinner", "vegan", "vegetarian", "groceries", "pasta", "meal prep")),
    "IAB8-6": (3, ("coffee", "espresso", "latte", "beans", "grinder", "tea")),
    "IAB8-5": (1, ("cocktail", "craft beer", "wine pairing")),
    "IAB5": (2, ("course", "study tips", "exam", "online course")),
    "IAB5-8": (2, ("language", "learn", "japanese", "spanish", "travel phrases")),
    "IAB2": (3, ("car", "suv", "car insurance", "test drive")),
    "IAB2-10": (2, ("electric car", "ev", "charging", "battery", "range")),
    "IAB2-12": (1, ("hybrid", "fuel economy", "electric car")),
    "IAB22": (4, ("deal", "discount", "gift ideas", "black friday", "coupon")),
    "IAB18": (2, ("sneakers", "jacket", "dress", "fashion")),
    "IAB17": (2, ("running shoes", "football", "tennis racket", "gym")),
    "IAB9": (2, ("photography", "camera", "guitar", "board games")),
    "IAB10": (2, ("garden", "furniture", "smart home", "vacuum")),
    "IAB3": (2, ("invoice", "crm", "small business", "marketing")),
    "IAB1": (2, ("movie", "streaming", "concert tickets", "books")),
    "IAB16": (1, ("dog food", "cat toys", "pet insurance")),
    "IAB15": (1, ("telescope", "space", "science kit")),
    # Sensitive topics of the default policy (no auction: sensitive_topic) ...
    "IAB7": (2, ("headache", "diet", "symptoms", "fitness tracker")),
    "IAB11": (1, ("election", "tax law", "visa")),
    "IAB23": (0.5, ("prayer", "meditation")),
    # ... and categories that never get an auction (brand_safety).
    "IAB25": (0.3, ("unmoderated",)),
    "IAB26": (0.1, ("piracy",)),
}
for _code in TAXONOMY:
    if _code not in IAB_CATEGORIES:
        raise RuntimeError(f"loadtests.generator: {_code} is not an IAB Content Taxonomy 1.0 code")

# (locale, country, weight)
LOCALES: tuple[tuple[str, str, float], ...] = (
    ("en-US", "US", 30), ("en-GB", "GB", 8), ("en-CA", "CA", 4), ("fr-CA", "CA", 1), ("en-AU", "AU", 3),
    ("en-IN", "IN", 6), ("hi-IN", "IN", 2), ("de-DE", "DE", 6), ("de-AT", "AT", 1), ("fr-FR", "FR", 5),
    ("es-ES", "ES", 4), ("es-MX", "MX", 3), ("pt-BR", "BR", 5), ("it-IT", "IT", 3), ("nl-NL", "NL", 2),
    ("sv-SE", "SE", 1), ("pl-PL", "PL", 1), ("ja-JP", "JP", 5), ("ko-KR", "KR", 2), ("zh-TW", "TW", 1),
    ("id-ID", "ID", 2), ("tr-TR", "TR", 1), ("ar-AE", "AE", 1), ("en-NG", "NG", 1), ("en-ZA", "ZA", 1),
)
DEVICES: tuple[tuple[str, float], ...] = (("mobile", 60), ("desktop", 32), ("tablet", 8))
PLACEMENTS: tuple[tuple[str, float], ...] = (("chat_inline", 80), ("chat_sidebar", 20))
BLOCKED_LABELS = ("hate", "extremism", "self_harm", "adult", "violence_graphic")
BENIGN_LABELS = ("profanity_mild", "medical_mention", "alcohol", "news_event")
AGE_BRACKETS: tuple[tuple[str, float], ...] = (("18_plus", 70), ("unknown", 26), ("13_17", 3), ("under_13", 1))
FILLER = ("best", "cheap", "how to", "near me", "review", "2026", "compare")


@dataclass(frozen=True)
class Mix:
    """Shares of the special cases in the stream (0..1)."""

    blocked_safety: float = 0.02
    benign_safety: float = 0.05
    no_consent: float = 0.05
    no_personalization: float = 0.10
    floor: float = 0.35
    users: int = 20_000


def _weighted(items: tuple[tuple[Any, float], ...] | list[tuple[Any, float]]) -> tuple[list[Any], list[float]]:
    return [item for item, _ in items], [weight for _, weight in items]


class IntentGenerator:
    """`next()` gives one `chat.intents` record; `event_id` unique per generator (run tag + count)."""

    def __init__(self, seed: int = 1, mix: Mix | None = None, run_tag: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.mix = mix or Mix()
        self.run_tag = run_tag or uuid.uuid4().hex[:8]
        self.count = 0
        self._codes, self._code_weights = _weighted([(code, w) for code, (w, _) in TAXONOMY.items()])
        self._locales, self._locale_weights = _weighted([((loc, c), w) for loc, c, w in LOCALES])
        self._devices, self._device_weights = _weighted(DEVICES)
        self._placements, self._placement_weights = _weighted(PLACEMENTS)
        self._ages, self._age_weights = _weighted(AGE_BRACKETS)

    def next(self) -> dict[str, Any]:
        rng, mix = self.rng, self.mix
        self.count += 1
        code = rng.choices(self._codes, self._code_weights)[0]
        vocabulary = TAXONOMY[code][1]
        keywords = rng.sample(vocabulary, min(len(vocabulary), rng.choice((1, 2, 2, 3, 3, 4))))
        if rng.random() < 0.2:
            keywords.append(rng.choice(FILLER))
        locale, country = rng.choices(self._locales, self._locale_weights)[0]
        user = f"lt-u{rng.randrange(mix.users)}"
        labels: list[str] = []
        roll = rng.random()
        if roll < mix.blocked_safety:
            labels.append(rng.choice(BLOCKED_LABELS))
        elif roll < mix.blocked_safety + mix.benign_safety:
            labels.append(rng.choice(BENIGN_LABELS))
        intent: dict[str, Any] = {
            "schema_version": 1,
            "event_id": f"lt-{self.run_tag}-{self.count}",
            "ts": int(time.time() * 1000),
            "user_id": user,
            "session_id": f"{user}-s{rng.randrange(4)}",
            "placement": rng.choices(self._placements, self._placement_weights)[0],
            "slots": rng.choices((1, 2, 3), (70, 20, 10))[0],
            "intent": {"category": code, "keywords": keywords, "confidence": round(rng.uniform(0.55, 0.99), 2)},
            "locale": locale,
            "country": country,
            "device": rng.choices(self._devices, self._device_weights)[0],
            "safety": {"labels": labels},
            "consent": {"ads": rng.random() >= mix.no_consent, "personalization": rng.random() >= mix.no_personalization},
            "age_bracket": rng.choices(self._ages, self._age_weights)[0],
        }
        if rng.random() < mix.floor:
            intent["floor_cpm_micros"] = rng.choice((250_000, 500_000, 1_000_000, 2_000_000, 5_000_000))
        return intent


VERTICALS = {"IAB19": "software", "IAB20": "travel", "IAB8": "retail", "IAB5": "education", "IAB2": "automotive"}


def campaigns(n: int = 80, seed: int = 3, tag: str = "lt") -> list[dict[str, Any]]:
    """`n` synthetic campaigns targeting the taxonomy's keywords (valid campaign records), from
    n // 3 advertisers; sensitive and unsafe categories get none."""
    rng = random.Random(seed)
    codes = [code for code in TAXONOMY if code not in ("IAB7", "IAB11", "IAB23", "IAB25", "IAB26")]
    out: list[dict[str, Any]] = []
    for i in range(n):
        code = codes[i % len(codes)]
        vocabulary = TAXONOMY[code][1]
        cpc = rng.random() < 0.4
        record: dict[str, Any] = {
            "campaign_id": f"{tag}-c{i}",
            "advertiser_id": f"{tag}-a{i % max(1, n // 3)}",
            "status": "active",
            "bid": {
                "type": "cpc" if cpc else "cpm",
                "amount_micros": rng.randint(200_000, 2_000_000) if cpc else rng.randint(500_000, 8_000_000),
            },
            "pctr": round(rng.uniform(0.005, 0.04), 4),
            "budget": {"daily_micros": rng.randint(200, 2_000) * 1_000_000, "total_micros": 100_000 * 1_000_000},
            "pacing": "asap",
            "targeting": {
                "keywords": rng.sample(vocabulary, min(len(vocabulary), 3)),
                "categories": [code.partition("-")[0]],
            },
            "vertical": VERTICALS.get(code.partition("-")[0], "general"),
            "creatives": [
                {
                    "creative_id": f"{tag}-c{i}-1",
                    "title": f"{IAB_CATEGORIES[code][:60]} offer {i}",
                    "body": "A synthetic creative for load tests.",
                    "url": f"https://example.com/lt/{i}",
                    "cta": "Learn more",
                }
            ],
        }
        if rng.random() < 0.25:
            record["targeting"]["devices"] = rng.sample(["mobile", "desktop", "tablet"], 2)
        if rng.random() < 0.25:
            record["frequency_cap"] = {"max": rng.randint(2, 6), "window_s": 3600}
        out.append(record)
    return out
