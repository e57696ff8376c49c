"""Campaigns as Vickrey stores and runs them: `prepare_campaign` is what `vickrey campaigns apply`, the
API and `vickrey simulate` run on every campaign object (pure; the policy is given)."""

from __future__ import annotations

from typing import Any

from autopilot.derive import derive
from schemas.campaign import restricted_vertical_problem, validate_campaign


def prepare_campaign(obj: Any, policy: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """A campaign as it is stored, or every problem: the record's own (schemas.campaign), a vertical the
    policy restricts, and with `targeting.auto` the targeting
    derived from its creatives and brief (`targeting_derived`; refused when they yield nothing)."""
    campaign, found = validate_campaign(obj)
    problems = list(found)
    if isinstance(obj, dict):  # named even when the campaign has other problems
        restricted = restricted_vertical_problem(campaign or obj, policy)
        if restricted:
            problems.append(restricted)
    if campaign is None or problems:
        return None, problems
    targeting = campaign.get("targeting") or {}
    campaign.pop("targeting_derived", None)  # Vickrey writes it, whatever the input says
    if targeting.get("auto"):
        derived = derive(campaign["creatives"], campaign.get("brief"))
        if derived.empty:
            return None, ["targeting.auto: the creatives' titles and bodies and the brief yield no keyword and no "
                          "category to target; say more about what is sold (a brief), or give keywords"]
        campaign["targeting_derived"] = derived.as_json()
    return campaign, []
