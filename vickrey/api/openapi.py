"""The OpenAPI 3.1 document served at `/openapi.json`, written by hand.

The record shapes are not copied: the campaign, minute-window and autopilot-decision schemas are the
contract's own JSON Schemas (`schemas/campaign.json`, `schemas/reports.campaign-minute.json`,
`schemas/campaigns.autopilot.json`; OpenAPI 3.1 speaks JSON Schema 2020-12), their `$defs` moved to
`components/schemas` with a prefix. Everything else (paths, requests, responses, errors) is spelled out
below; keep it in step with `app.py` and `campaigns.py`.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any, Final

import orjson

from core.keys import AUTOPILOT_HISTORY_MAX

JSON: Final = "application/json"
REF: Final = "#/components/schemas/"
_SAFE_INT: Final = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
# Stored campaign fields that are absent rather than null when not set (schemas.campaign).
_OPTIONAL_STORED: Final = ("bid", "brief", "targeting_derived")


def _record_schema(name: str, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema without $defs, {prefixed def name: def}) with every `#/$defs/x` ref rebased."""
    schema = orjson.loads(resources.files("schemas").joinpath(name).read_bytes())

    def rebase(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (REF + prefix + v.removeprefix("#/$defs/") if k == "$ref" else rebase(v))
                for k, v in node.items()
                if k not in ("$schema", "$id")
            }
        if isinstance(node, list):
            return [rebase(v) for v in node]
        return node

    schema = rebase(schema)
    defs = {prefix + k: v for k, v in schema.pop("$defs", {}).items()}
    return schema, defs


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _content(_ref("Errors"))}
    if headers:
        response["headers"] = headers
    return response


RESPONSES: Final[dict[str, Any]] = {
    "BadRequest": _error(
        "Refused, nothing changed: every problem named as `field: problem` (unknown query parameters too)."
    ),
    "Unauthorized": _error(
        "Missing, malformed or unknown API key.",
        {"WWW-Authenticate": {"description": '`Bearer realm="vickrey"`', "schema": {"type": "string"}}},
    ),
    "NotFound": _error("No such campaign among yours (another advertiser's campaign answers the same)."),
    "Conflict": _error("The campaign_id is taken (campaign ids are global); nothing changed."),
    "TooLarge": _error("The body is larger than 64 KiB (65536 bytes); nothing changed."),
    "TooMany": _error(
        "Rate limit of this key reached (a token bucket per key, shared by every API process).",
        {
            "Retry-After": {
                "description": "Seconds to wait.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    ),  # fmt: skip
    "Unavailable": _error(
        "Redis or Kafka is unavailable; try again. The errors say whether anything changed."
    ),
}


def _responses(ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    names = {"400": "BadRequest", "401": "Unauthorized", "404": "NotFound", "409": "Conflict",
             "413": "TooLarge", "429": "TooMany", "503": "Unavailable"}  # fmt: skip
    out = dict(ok)
    for code in sorted({*errors, "400", "401", "429", "503"}):  # 400: unknown query parameters
        out[code] = {"$ref": "#/components/responses/" + names[code]}
    return out


def _ok(
    description: str, schema: str, code: str = "200", headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _content(_ref(schema))}
    if headers:
        response["headers"] = headers
    return {code: response}


CAMPAIGN_ID: Final = {
    "name": "campaign_id",
    "in": "path",
    "required": True,
    "description": "One of your campaign ids.",
    "schema": _ref("campaign.id"),
    "example": "c-123",
}


def _paths() -> dict[str, Any]:
    item = "/v1/campaigns/{campaign_id}"
    location = {"Location": {"description": "The new campaign's URL path.", "schema": {"type": "string"}}}
    status_change = {
        "parameters": [CAMPAIGN_ID],
        "responses": _responses(_ok("The campaign after the change (unchanged when it already had that "
                                    "status).", "CampaignView"), "404"),
    }  # fmt: skip
    return {
        "/": {"get": {"summary": "The advertiser dashboard (HTML; the key is entered in the page).",
                      "security": [], "operationId": "dashboard",
                      "responses": {"200": {"description": "The page.",
                                            "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document.", "security": [], "operationId": "openapi",
                                  "responses": {"200": {"description": "OpenAPI 3.1.",
                                                        "content": _content({"type": "object"})}}}},
        "/healthz": {"get": {"summary": "Liveness: answers 200 while Redis answers.", "security": [],
                             "operationId": "healthz",
                             "responses": {"200": {"description": "Up.", "content": _content(
                                 {"type": "object", "required": ["status"], "additionalProperties": False,
                                  "properties": {"status": {"const": "ok"}}})},
                                 "503": {"$ref": "#/components/responses/Unavailable"}}}},
        "/v1/campaigns": {
            "get": {"summary": "Your campaigns, each with its live spend.", "operationId": "listCampaigns",
                    "responses": _responses(_ok("Your campaigns, sorted by id.", "CampaignList"))},
            "post": {"summary": "Create a campaign (validated like `vickrey campaigns apply`; live in the "
                                "workers within 1 s).", "operationId": "createCampaign",
                     "requestBody": {"required": True, "content": _content(_ref("CampaignCreate"))},
                     "responses": _responses(_ok("Created.", "CampaignView", "201", location),
                                             "400", "409", "413")},
        },
        item: {
            "parameters": [CAMPAIGN_ID],
            "get": {"summary": "One of your campaigns with its live spend.", "operationId": "getCampaign",
                    "responses": _responses(_ok("The campaign.", "CampaignView"), "404")},
            "put": {"summary": "Replace one of your campaigns (the whole campaign; live within 1 s).",
                    "operationId": "replaceCampaign",
                    "requestBody": {"required": True, "content": _content(_ref("CampaignReplace"))},
                    "responses": _responses(_ok("Replaced.", "CampaignView"), "400", "404", "413")},
        },
        item + "/pause": {"post": {"summary": "Pause (workers stop bidding within 1 s).",
                                   "operationId": "pauseCampaign", **status_change}},
        item + "/resume": {"post": {"summary": "Resume (status active).", "operationId": "resumeCampaign",
                                    **status_change}},
        item + "/report": {"get": {
            "summary": "Minute windows from reporting (window_start in [from, to)) and their totals, with "
                       "the live spend. Aggregates only.",
            "operationId": "campaignReport",
            "parameters": [
                CAMPAIGN_ID,
                {"name": "from", "in": "query", "required": False, "schema": _SAFE_INT,
                 "description": "Epoch ms, inclusive; default `to` minus one hour."},
                {"name": "to", "in": "query", "required": False, "schema": _SAFE_INT,
                 "description": "Epoch ms, exclusive; default now. At most 7 days after `from`."},
            ],
            "responses": _responses(_ok("The report.", "Report"), "400", "404"),
        }},
        item + "/autopilot": {"get": {
            "summary": "The autopilot's decisions for the campaign (docs/contract.md §7): its effective bid "
                       "and targeting (the latest decision, with its reason) and the history of its "
                       "decisions, oldest first. Aggregates only.",
            "operationId": "campaignAutopilot",
            "parameters": [
                CAMPAIGN_ID,
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": AUTOPILOT_HISTORY_MAX,
                            "default": AUTOPILOT_HISTORY_MAX},
                 "description": f"At most this many decisions (the latest), 1 to {AUTOPILOT_HISTORY_MAX}; "
                                f"default {AUTOPILOT_HISTORY_MAX}."},
            ],
            "responses": _responses(_ok("The decisions.", "Autopilot"), "400", "404"),
        }},
        "/v1/conversions": {"post": {
            "summary": "Report conversions of your clicks (docs/contract.md §8): one object or a list of up to "
                       "1,000, accepted or refused whole. Attributed exactly once by the conversions role; a "
                       "conversion_id you reported before is counted once (a retry is safe).",
            "operationId": "postConversions",
            "requestBody": {"required": True, "content": _content({"anyOf": [
                _ref("ConversionPost"),
                {"type": "array", "minItems": 1, "maxItems": 1000, "items": _ref("ConversionPost")}]})},
            "responses": _responses(_ok("Accepted: on ad.conversions.raw, to be attributed.", "ConversionsAccepted",
                                        "202"), "400", "404", "413"),
        }},
    }  # fmt: skip


def _schemas() -> dict[str, Any]:
    campaign, campaign_defs = _record_schema("campaign.json", "campaign.")
    window, window_defs = _record_schema("reports.campaign-minute.json", "report.")
    decision, decision_defs = _record_schema("campaigns.autopilot.json", "autopilot.")
    decision.pop("examples", None)
    decision.update(title="AutopilotDecision")
    campaign.pop("examples", None)
    props = campaign["properties"]
    keys = list(props)

    def variant(
        title: str, description: str, required: list[str], extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out = copy.deepcopy(campaign)
        out.update(title=title, description=description, required=required)
        if extra:
            out["properties"] = {**out["properties"], **extra}
        return out

    create_desc = ("A campaign as `vickrey campaigns apply` takes it (schemas/campaign.json), except that "
                   "advertiser_id is taken from your key: leave it out or send your own id (any other "
                   "value is refused). Rules beyond this schema (daily <= total budget, unique creative "
                   "ids, pctr decimals, end after start, the policy's restricted verticals) answer 400.")  # fmt: skip
    window["properties"] = {
        k: v for k, v in window["properties"].items() if k not in ("schema_version", "campaign_id")
    }
    window["properties"]["partial"] = {
        "type": "boolean",
        "description": "True while the minute is still open: reporting rewrites it until it closes.",
    }
    window["required"] = [k for k in window["required"] if k in window["properties"]] + ["partial"]
    window.pop("examples", None)
    window.update(title="Window", description="One minute of one campaign: " + window["description"])
    spend = {"type": "object", "additionalProperties": False, "required": ["today_micros", "total_micros"],
             "description": "Live spend from billing: today (UTC) and in total, in micros.",
             "properties": {"today_micros": _SAFE_INT, "total_micros": _SAFE_INT}}  # fmt: skip
    totals = {"type": "object", "additionalProperties": False,
              "required": ["impressions", "clicks", "ctr", "spend_micros", "conversions", "conversion_value_micros",
                           "cost_per_conversion_micros", "return_on_ad_spend"],
              "description": "Sums over the windows of the report (ctr = clicks / impressions, 0 without "
                             "impressions); cost per conversion = spend / conversions (micros, rounded half up) "
                             "and return on ad spend = conversion value / spend, null when dividing by 0.",
              "properties": {"impressions": _SAFE_INT, "clicks": _SAFE_INT, "ctr": {"type": "number", "minimum": 0},
                             "spend_micros": _SAFE_INT, "conversions": _SAFE_INT,
                             "conversion_value_micros": _SAFE_INT,
                             "cost_per_conversion_micros": {"anyOf": [_SAFE_INT, {"type": "null"}]},
                             "return_on_ad_spend": {"anyOf": [{"type": "number", "minimum": 0},
                                                              {"type": "null"}]}}}  # fmt: skip
    report = {
        "type": "object", "additionalProperties": False,
        "required": ["campaign_id", "from", "to", "status", "pacing", "budget", "spend", "totals", "windows"],
        "properties": {
            "campaign_id": _ref("campaign.id"), "from": _SAFE_INT, "to": _SAFE_INT,
            "status": props["status"], "pacing": props["pacing"], "budget": props["budget"],
            "spend": _ref("Spend"), "totals": totals,
            "windows": {"type": "array", "items": _ref("Window"), "description": "Oldest first."},
        },
    }  # fmt: skip
    effective_fields = ("bid", "keywords", "categories", "reason", "version", "ts")
    effective = {
        "description": "The campaign's effective bid and targeting: the latest decision's (bid null: the "
                       "autopilot sets no bid, the campaign's own applies), with its reason; null until the "
                       "autopilot has decided.",
        "anyOf": [
            {"type": "object", "additionalProperties": False, "required": list(effective_fields),
             "properties": {f: decision["properties"][f] for f in effective_fields}},
            {"type": "null"},
        ],
    }  # fmt: skip
    autopilot = {
        "type": "object", "additionalProperties": False,
        "required": ["campaign_id", "goal", "effective", "history"],
        "properties": {
            "campaign_id": _ref("campaign.id"), "goal": props["goal"], "effective": effective,
            "history": {"type": "array", "maxItems": AUTOPILOT_HISTORY_MAX,
                        "items": _ref("AutopilotDecision"),
                        "description": "The decisions (the latest `limit`), oldest first (by version)."},
        },
    }  # fmt: skip
    return {
        **campaign_defs,
        **window_defs,
        **decision_defs,
        **_conversion_schemas(),
        "CampaignCreate": variant("CampaignCreate", create_desc, [k for k in campaign["required"] if k != "advertiser_id"]),
        "CampaignReplace": variant(
            "CampaignReplace",
            create_desc + " campaign_id is the path's: leave it out or send the same.",
            [k for k in campaign["required"] if k not in ("advertiser_id", "campaign_id")],
        ),
        "CampaignView": variant(
            "CampaignView", "A stored campaign (every default filled) with its live spend.",
            [*(k for k in keys if k not in _OPTIONAL_STORED), "spend"],
            {"spend": _ref("Spend")},
        ),
        "CampaignList": {"type": "object", "additionalProperties": False, "required": ["campaigns"],
                         "properties": {"campaigns": {"type": "array", "items": _ref("CampaignView")}}},
        "Spend": spend,
        "Window": window,
        "Report": report,
        "AutopilotDecision": decision,
        "Autopilot": autopilot,
        "Errors": {"type": "object", "additionalProperties": False, "required": ["errors"],
                   "properties": {"errors": {"type": "array", "minItems": 1, "items": {"type": "string"}}}},
    }  # fmt: skip


def _conversion_schemas() -> dict[str, Any]:
    raw, raw_defs = _record_schema("ad.conversions.raw.json", "conversion.")
    posted = ("conversion_id", "click_id", "kind", "value_micros", "ts")
    post = {"type": "object", "additionalProperties": False, "title": "ConversionPost",
            "required": ["conversion_id", "click_id", "kind"],
            "description": "A conversion of one of your clicks; `source` (advertiser) and `advertiser_id` (yours) "
                           "are set by the server. `ts` defaults to now, `value_micros` to 0.",
            "properties": {k: raw["properties"][k] for k in posted}}  # fmt: skip
    accepted = {"type": "object", "additionalProperties": False, "required": ["accepted", "conversion_ids"],
                "properties": {"accepted": {"type": "integer", "minimum": 1, "maximum": 1000},
                               "conversion_ids": {"type": "array", "items": {"type": "string"}}}}  # fmt: skip
    return {**raw_defs, "ConversionPost": post, "ConversionsAccepted": accepted}


@functools.cache
def _document() -> bytes:
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Vickrey advertiser API",
            "version": "1.0.0",
            "description": (
                "Self-serve campaigns and reports for advertisers. Authenticate with `Authorization: Bearer "
                "<key>` (from `vickrey advertisers create NAME`). You see and change only your own "
                "campaigns; responses carry aggregates only (no user or session ids). Every error is "
                "`{\"errors\": [\"field: problem\", ...]}`. Bodies are JSON, at most 64 KiB (a list of "
                "conversions: 1 MiB)."
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An advertiser API key, `vk_` + 32 characters."}},
            "schemas": _schemas(),
            "responses": RESPONSES,
        },
    }  # fmt: skip
    return orjson.dumps(doc)


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may change it)."""
    document: dict[str, Any] = orjson.loads(_document())
    return document
