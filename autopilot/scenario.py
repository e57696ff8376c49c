"""A `vickrey simulate` scenario (docs/contract.md §7): read, check every part, name every problem.

    {"seed": 7, "hours": 24, "intents_per_hour": 2000 (or one number per hour),
     "keywords": {"power bank": {"weight": 5, "category": "IAB19-6"}, ...},
     "keywords_per_intent": [1, 3],
     "campaigns": [campaign objects, as `vickrey campaigns apply` takes them],
     "true_ctr": {"c-1": {"power bank": 0.05, "*": 0.01}, ...},
     "true_cvr": {"c-1": 0.08, ...}}                   (optional)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autopilot.campaigns import prepare_campaign
from schemas.campaign import DEFAULT_POLICY
from schemas.iab import IAB_CATEGORIES

KEYS = ("seed", "hours", "intents_per_hour", "keywords", "keywords_per_intent", "campaigns", "true_ctr", "true_cvr")
REQUIRED = KEYS[:-1]
MAX_HOURS = 24 * 7
MAX_INTENTS_PER_HOUR = 1_000_000
MAX_KEYWORDS_PER_INTENT = 32


class ScenarioError(ValueError):
    """The scenario was refused; `problems` names every one as `field: problem`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    hours: int
    intents_per_hour: tuple[int, ...]  # one per hour
    keywords: tuple[tuple[str, float, str], ...]  # (keyword, weight, category), in the file's order
    keywords_per_intent: tuple[int, int]
    campaigns: tuple[dict[str, Any], ...]  # prepared as `campaigns apply` stores them
    true_ctr: dict[str, dict[str, float]]
    true_cvr: dict[str, float]


def read_scenario(obj: Any) -> Scenario:
    """The scenario, or ScenarioError naming every problem."""
    if not isinstance(obj, dict):
        raise ScenarioError([f"(scenario): must be a JSON object, got {type(obj).__name__}"])
    problems = [f"{key}: unknown key (known: {', '.join(KEYS)})" for key in obj if key not in KEYS]
    problems += [f"{key}: missing (required)" for key in REQUIRED if key not in obj]
    seed = _integer(obj, "seed", 0, 2**63 - 1, problems)
    hours = _integer(obj, "hours", 1, MAX_HOURS, problems)
    per_hour = _per_hour(obj.get("intents_per_hour"), hours, problems)
    keywords = _keywords(obj.get("keywords"), problems)
    span = _span(obj.get("keywords_per_intent"), problems)
    campaigns = _campaigns(obj.get("campaigns"), problems)
    ids = {c["campaign_id"] for c in campaigns}
    true_ctr = _true_ctr(obj.get("true_ctr"), ids, problems)
    true_cvr = _rates(obj.get("true_cvr", {}), "true_cvr", ids, problems)
    if problems or seed is None or hours is None or per_hour is None or span is None:
        raise ScenarioError(problems or ["(scenario): invalid"])
    return Scenario(seed, hours, per_hour, keywords, span, tuple(campaigns), true_ctr, true_cvr)


def _integer(obj: dict[str, Any], key: str, lo: int, hi: int, problems: list[str]) -> int | None:
    value = obj.get(key)
    if type(value) is int and lo <= value <= hi:
        return value
    if key in obj:
        problems.append(f"{key}: must be an integer from {lo} to {hi}, got {value!r}")
    return None


def _per_hour(value: Any, hours: int | None, problems: list[str]) -> tuple[int, ...] | None:
    def ok(number: Any) -> bool:
        return type(number) is int and 0 <= number <= MAX_INTENTS_PER_HOUR

    if ok(value):
        return tuple([value] * (hours or 0))
    if isinstance(value, list) and value and all(ok(n) for n in value):
        if hours is not None and len(value) not in (24, hours):
            problems.append(f"intents_per_hour: a list needs 24 numbers (repeated daily) or one per hour ({hours}), "
                            f"got {len(value)}")
            return None
        return tuple(value[h % len(value)] for h in range(hours or 0))
    if value is not None:
        problems.append(f"intents_per_hour: must be an integer from 0 to {MAX_INTENTS_PER_HOUR} or a list of them, "
                        f"got {value!r}")
    return None


def _keywords(value: Any, problems: list[str]) -> tuple[tuple[str, float, str], ...]:
    if not isinstance(value, dict) or not value:
        if value is not None:
            problems.append("keywords: must be a non-empty object {keyword: {weight, category}}")
        return ()
    found = []
    for keyword, spec in value.items():
        path = f"keywords.{keyword}"
        if not keyword.strip() or len(keyword) > 64:
            problems.append(f"{path}: a keyword must be 1 to 64 characters")
        if not isinstance(spec, dict) or set(spec) - {"weight", "category"}:
            problems.append(f"{path}: must be an object {{weight, category}}, got {spec!r}")
            continue
        weight, category = spec.get("weight"), spec.get("category")
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not weight > 0:
            problems.append(f"{path}.weight: must be a positive number, got {weight!r}")
            continue
        if category not in IAB_CATEGORIES:
            problems.append(f"{path}.category: unknown IAB category {category!r}")
            continue
        found.append((keyword, float(weight), str(category)))
    return tuple(found)


def _span(value: Any, problems: list[str]) -> tuple[int, int] | None:
    if (isinstance(value, list) and len(value) == 2 and all(type(n) is int for n in value)
            and 1 <= value[0] <= value[1] <= MAX_KEYWORDS_PER_INTENT):
        return value[0], value[1]
    if value is not None:
        problems.append(f"keywords_per_intent: must be [least, most] with 1 <= least <= most <= "
                        f"{MAX_KEYWORDS_PER_INTENT}, got {value!r}")
    return None


def _campaigns(value: Any, problems: list[str]) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        if value is not None:
            problems.append("campaigns: must be a non-empty list of campaign objects")
        return []
    prepared: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, obj in enumerate(value):
        campaign, found = prepare_campaign(obj, dict(DEFAULT_POLICY))
        problems += [f"campaigns[{index}].{problem}" for problem in found]
        if campaign is not None:
            if campaign["campaign_id"] in seen:
                problems.append(f"campaigns[{index}].campaign_id: {campaign['campaign_id']!r} appears twice")
            seen.add(campaign["campaign_id"])
            prepared.append(campaign)
    return prepared


def _true_ctr(value: Any, ids: set[str], problems: list[str]) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        if value is not None:
            problems.append("true_ctr: must be an object {campaign_id: {keyword or *: probability}}")
        return {}
    found: dict[str, dict[str, float]] = {}
    for campaign_id, rates in value.items():
        found[campaign_id] = _rates(rates, f"true_ctr.{campaign_id}", None, problems)
        if ids and campaign_id not in ids:
            problems.append(f"true_ctr.{campaign_id}: no campaign has this id")
    return found


def _rates(value: Any, path: str, ids: set[str] | None, problems: list[str]) -> dict[str, float]:
    if not isinstance(value, dict):
        problems.append(f"{path}: must be an object of probabilities (0 to 1)")
        return {}
    found: dict[str, float] = {}
    for key, rate in value.items():
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
            problems.append(f"{path}.{key}: must be a probability from 0 to 1, got {rate!r}")
            continue
        if ids is not None and ids and key not in ids:
            problems.append(f"{path}.{key}: no campaign has this id")
        found[key] = float(rate)
    return found
