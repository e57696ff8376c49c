"""The Redis key layout: every key Vickrey reads or writes is built here, and only here.

`{ns}` is `VICKREY_NAMESPACE`. Braces in a key are a Redis Cluster hash tag: every key of one
campaign (`{c:<id>}`), of one person (`{u:<user_id>}`), of one event (`{e:<bucket>}`: a bucket of events, below), of one click (`{k:<click_id>}`), of one
advertiser's conversions (`{a:<advertiser_id>}`) or of one kept-outcome blob (`{b:<id>}`) lands in one slot, and so do the
policy's keys (`{policy}`), the campaign registry (`{campaigns}`: the campaigns, their change stream and
version) and the advertiser registry (`{advertisers}`), so the atomic steps that touch them can move
to a cluster without a redesign.

| key | type | what |
|---|---|---|
| `{ns}:{campaigns}` | hash | campaign_id → canonical campaign JSON |
| `{ns}:{campaigns}:changes` | stream | one entry per campaign change (`campaign_id`, `op`, `version`) |
| `{ns}:{campaigns}:version` | int | version of the latest change |
| `{ns}:{c:<id>}:budget` | hash | `daily_micros`, `total_micros` |
| `{ns}:{c:<id>}:spend:total` | int | micros spent in total |
| `{ns}:{c:<id>}:spend:day:<YYYYMMDD>` | int | micros spent that UTC day |
| `{ns}:{c:<id>}:ctr` | hash | `impressions`, `clicks` counted by the feedback role |
| `{ns}:{c:<id>}:ctr:at` | hash | `<topic>:<partition>` → next offset counted into the campaign's `ctr` |
| `{ns}:{c:<id>}:minutes` | hash | window_start → `reports.campaign-minute` JSON |
| `{ns}:{c:<id>}:billed:<click_id>` | string | a charged click's first answer (billing) |
| `{ns}:{c:<id>}:hold:<event_id>` | string | an event's budget hold (`<attempt> <day> <charge>`; the reservation split by slot, Redis Cluster) |
| `{ns}:{c:<id>}:autopilot` | sorted set | the autopilot's decisions (`campaigns.autopilot` JSON), scored by version |
| `{ns}:{u:<user_id>}:caps` | hash | campaign_id → `<count> <window end, ms>`: the person's frequency-cap windows (`parse_cap`; ended ones until the person's next write); expires with the last |
| `{ns}:{u:<user_id>}:hidden` | set | advertisers the person hid |
| `{ns}:{u:<user_id>}:prefs` | hash | `personalization` on/off |
| `{ns}:{u:<user_id>}:keys` | set | the person's expiring keys of other names, so `forget` finds them all |
| `{ns}:{u:<user_id>}:held` | hash | event_id → what the event counted in the person's cap windows (`[<attempt>, [[campaign_id, window expiry ms], ...]]`; the reservation split by slot) |
| `{ns}:{u:<user_id>}:held:due` | sorted set | event_id by when its `held` entry may go |
| `{ns}:{k:<click_id>}:click` | string | a billable click's campaign, advertiser, impression and ts (conversions) |
| `{ns}:{a:<advertiser_id>}:conversion:<conversion_id>` | string | the raw record that attributed it (conversions) |
| `{ns}:{e}:seen:<period>` | hash | event_id → where a decided event came from, and where its outcome is kept: the events decided in that period (one Redis: `reserve.lua`) |
| `{ns}:{e}:seen` | string | `<period_s> <legacy until, ms>`: the periods' length, and until when events are also looked up under the older per-event key below |
| `{ns}:{e:<bucket>}:<event_id>:outcome` | string | the same for one event, with its own TTL: a Redis Cluster (split by slot, or its attempt in flight), and one Redis before the periods' hashes |
| `{ns}:{b:<blob id>}` | string | the outcomes of one reservation call, until its batch commits |
| `{ns}:{policy}`, `{ns}:{policy}:version` | string, int | the trust policy and its version |
| `{ns}:{advertisers}` | hash | SHA-256 of an API key → the advertiser JSON |
| `{ns}:{advertisers}:<id>` | string | the advertiser JSON (claims the id) |
| `{ns}:ratelimit:<key digest>` | hash | an API key's token bucket |
| `{ns}:reports:campaigns` | set | campaigns that have minute reports |
| `{ns}:streams:feedback:offsets` | hash | `<topic>:<partition>` → next offset counted into CTR (where the role resumes) |
| `{ns}:reconciled` | string | when `vickrey reconcile` last rebuilt the namespace, and what it did (JSON) |

The Lua scripts do not build keys either: they get these templates (`lua_templates`) and fill
the ids in with `string.format`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

AUTOPILOT_HISTORY_MAX = 500  # decisions kept per campaign in `autopilot(campaign_id)`
# Events share hash slots by bucket (CRC-32 of the event_id): on a Redis Cluster the reservation
# claims a chunk's events with one script call per bucket it touches (at most this many) instead
# of one per event, while the buckets still spread evenly over the primaries.
EVENT_BUCKETS = 128


def parse_cap(value: bytes | str) -> tuple[int, int]:
    """A field of `caps(user_id)`: (impressions counted, when the window ends in ms, Redis's clock).
    A window that has ended counts nothing, whatever its count says."""
    count, ends = (value.decode() if isinstance(value, bytes) else value).split(" ")
    return int(count), int(ends)


def event_bucket(event_id: str) -> int:
    """The hash-slot bucket of an event's keys (`{e:<bucket>}`)."""
    return zlib.crc32(event_id.encode()) % EVENT_BUCKETS


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str

    # -- templates: the one definition of every per-id key ----------------------------------------

    @property
    def campaign_prefix(self) -> str:
        """`%s` is the campaign_id."""
        return f"{self.namespace}:{{c:%s}}:"

    @property
    def person_prefix(self) -> str:
        """`%s` is the user_id."""
        return f"{self.namespace}:{{u:%s}}:"

    def lua_templates(self) -> dict[str, str]:
        """Key templates for the Lua scripts (`%s` placeholders, filled in order)."""
        campaign, person = self.campaign_prefix, self.person_prefix
        return {
            "budget": campaign + "budget",
            "spend_total": campaign + "spend:total",
            "spend_day": campaign + "spend:day:%s",
            "billed": campaign + "billed:%s",
            "hold": campaign + "hold:%s",
            "person": person,
            "caps": person + "caps",
            "hidden": person + "hidden",
            "prefs": person + "prefs",
            "person_keys": person + "keys",
            "held": person + "held",
            "held_due": person + "held:due",
            "outcome": f"{self.namespace}:{{e:%s}}:%s:outcome",  # bucket, event_id
            "seen": f"{self.namespace}:{{e}}:seen:%d",  # period
            "seen_layout": self.seen_layout(),
            "reconciled": self.reconciled(),
            "blob": f"{self.namespace}:{{b:%s}}",
        }

    # -- campaigns ----------------------------------------------------------------------------------

    def campaigns(self) -> str:
        return f"{self.namespace}:{{campaigns}}"

    def campaign_changes(self) -> str:
        return f"{self.namespace}:{{campaigns}}:changes"

    def campaigns_version(self) -> str:
        return f"{self.namespace}:{{campaigns}}:version"

    def budget(self, campaign_id: str) -> str:
        return (self.campaign_prefix + "budget") % campaign_id

    def spend_total(self, campaign_id: str) -> str:
        return (self.campaign_prefix + "spend:total") % campaign_id

    def spend_day(self, campaign_id: str, day: str) -> str:
        """Spend of one UTC day; `day` is `YYYYMMDD` (core.clock.utc_day)."""
        return (self.campaign_prefix + "spend:day:%s") % (campaign_id, day)

    def billed(self, campaign_id: str, click_id: str) -> str:
        """A charged click's first answer (billing's charge_clicks.lua; restored by reconcile)."""
        return (self.campaign_prefix + "billed:%s") % (campaign_id, click_id)

    def hold(self, campaign_id: str, event_id: str) -> str:
        """One event's budget hold on one campaign (auction/budgets_split.py)."""
        return (self.campaign_prefix + "hold:%s") % (campaign_id, event_id)

    def ctr(self, campaign_id: str) -> str:
        return (self.campaign_prefix + "ctr") % campaign_id

    def ctr_positions(self, campaign_id: str) -> str:
        """Per input partition, the next offset the feedback role counted into `ctr(campaign_id)`."""
        return (self.campaign_prefix + "ctr:at") % campaign_id

    def minutes(self, campaign_id: str) -> str:
        return (self.campaign_prefix + "minutes") % campaign_id

    def autopilot(self, campaign_id: str) -> str:
        """The autopilot's decisions for one campaign: a sorted set, JSON scored by version (the
        latest AUTOPILOT_HISTORY_MAX kept)."""
        return (self.campaign_prefix + "autopilot") % campaign_id

    def reported_campaigns(self) -> str:
        return f"{self.namespace}:reports:campaigns"

    def feedback_positions(self) -> str:
        return f"{self.namespace}:streams:feedback:offsets"

    # -- people -------------------------------------------------------------------------------------

    def person(self, user_id: str) -> str:
        """The prefix of every per-person key (what `forget` erases)."""
        return self.person_prefix % user_id

    def hidden(self, user_id: str) -> str:
        return self.person(user_id) + "hidden"

    def prefs(self, user_id: str) -> str:
        return self.person(user_id) + "prefs"

    def person_keys(self, user_id: str) -> str:
        return self.person(user_id) + "keys"

    def caps(self, user_id: str) -> str:
        """The person's frequency-cap windows, one field per campaign (`parse_cap` reads a value)."""
        return self.person(user_id) + "caps"

    def held(self, user_id: str) -> str:
        """What each recent event counted in the person's cap windows (auction/budgets_split.py)."""
        return self.person(user_id) + "held"

    def held_due(self, user_id: str) -> str:
        """When each entry of `held(user_id)` may go."""
        return self.person(user_id) + "held:due"

    # -- conversions ----------------------------------------------------------------------------------

    def click(self, click_id: str) -> str:
        """A billable click as the conversions role stores it for attribution."""
        return f"{self.namespace}:{{k:{click_id}}}:click"

    def conversion_claim(self, advertiser_id: str, conversion_id: str) -> str:
        """Who attributed an advertiser's conversion_id first (its raw record's origin)."""
        return f"{self.namespace}:{{a:{advertiser_id}}}:conversion:{conversion_id}"

    # -- the auction's kept outcomes ------------------------------------------------------------------

    def outcome(self, event_id: str) -> str:
        return f"{self.namespace}:{{e:{event_bucket(event_id)}}}:{event_id}:outcome"

    def any_outcome(self) -> str:
        """A SCAN pattern that matches every `outcome` key."""
        return f"{self.namespace}:{{e:*}}:*:outcome"

    def seen(self, period: int | str) -> str:
        """The events one Redis decided in a period (`reserve.lua`); `"*"` matches every period."""
        return f"{self.namespace}:{{e}}:seen:{period}"

    def seen_layout(self) -> str:
        return f"{self.namespace}:{{e}}:seen"

    def blob(self, blob_id: str) -> str:
        return f"{self.namespace}:{{b:{blob_id}}}"

    # -- policy and advertisers -------------------------------------------------------------------------

    # The policy's two keys share one hash tag, and so do every advertiser's: the policy's
    # WATCH/MULTI and an advertiser's create script each keep to one slot on a cluster. Both are
    # low-volume (API and CLI writes; workers read the policy once a second).

    def policy(self) -> str:
        return f"{self.namespace}:{{policy}}"

    def policy_version(self) -> str:
        return f"{self.namespace}:{{policy}}:version"

    def advertisers(self) -> str:
        return f"{self.namespace}:{{advertisers}}"

    def advertiser(self, advertiser_id: str) -> str:
        return f"{self.namespace}:{{advertisers}}:{advertiser_id}"

    def rate_limit(self, key_digest: str) -> str:
        return f"{self.namespace}:ratelimit:{key_digest}"

    def reconciled(self) -> str:
        """Left by `vickrey reconcile` (its time and report): absent in a new or emptied namespace."""
        return f"{self.namespace}:reconciled"

    def everything(self) -> str:
        """A SCAN pattern for every key of the namespace."""
        return f"{self.namespace}:*"
