-- Vickrey, the reservation split by hash slot (auction/budgets_split.py): one person's part.
-- Every key is the person's ({u:<user_id>}): one call per person of a chunk, pipelined.
--
-- KEYS[1] the person's key index (`{u:<id>}:keys`: it routes the call)
-- ARGV[1] JSON of the key templates, ARGV[2] TTL (s) of what an event counted, ARGV[3] user_id,
-- ARGV[4] JSON list, in auction order, of
--   {event_id, attempt, {{campaign_id, cap_max, cap_window_s, advertiser_id}, ...}}  check and count, or
--   {event_id, attempt}                                                               release.
--
-- Checks, per reservation: the person has not hidden the advertiser, and the campaign's
-- frequency-cap window (cap_max > 0) is below its max; when all pass, each capped campaign's
-- window is counted (in the person's `caps` hash, as caps.lua, put in front of this script, and
-- reserve.lua count it). What an event counted is kept in the person's `held` hash, field event_id =
-- JSON {attempt, {{campaign_id, the window's expiry (ms)}, ...}}, and an attempt first takes back
-- what an earlier one counted (only while that window lasts: a new window never pays for an old
-- one's count), so each attempt is idempotent and a window counts each event once. A later
-- attempt's entry answers "stale" and changes nothing (the caller is a zombie). A release counts
-- nothing. Entries are due a TTL after they were written (`held:due`, a sorted set by time) and
-- pruned a few per call, so the hash stays the size of the person's last TTL of capped events.
-- Per item: "ok", {"refused", {{campaign_id, "user_hidden"|"frequency_cap"}, ...}} (nothing
-- counted) or "stale". `held` and `held:due` are listed in the person's key index, for `forget`
-- (which erases `caps` by name).

local K, ttl, user = cjson.decode(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local items = cjson.decode(ARGV[4])
local listed = KEYS[1]
local call, format = redis.call, string.format
local hidden_key = format(K.hidden, user)
local held_key, due_key = format(K.held, user), format(K.held_due, user)
local anyone_hidden = call("EXISTS", hidden_key) == 1
local PRUNE = 32
local answers = {}
local wrote = false

local caps = caps_read(format(K.caps, user))

local function list(key, seconds)
  call("SADD", listed, key)
  if call("TTL", listed) < seconds then call("EXPIRE", listed, seconds) end
end

-- Entries whose TTL is over: nothing can ask for them any more.
local due = call("ZRANGEBYSCORE", due_key, "-inf", now_ms, "LIMIT", 0, PRUNE)
if #due > 0 then
  call("HDEL", held_key, unpack(due))
  call("ZREM", due_key, unpack(due))
end

for i, item in ipairs(items) do
  local event_id, attempt, reservations = item[1], item[2], item[3]
  local entry = call("HGET", held_key, event_id)
  local entry_attempt, counted = 0, {}
  if entry then
    local e = cjson.decode(entry)
    entry_attempt, counted = e[1], e[2]
  end
  if entry_attempt > attempt then
    answers[i] = "stale"
  else
    for _, c in ipairs(counted) do  -- take back the earlier attempt's counts, in their windows
      caps_give_back(caps, c[1], c[2])
    end
    local refused = {}
    for _, r in ipairs(reservations or {}) do
      if anyone_hidden and call("SISMEMBER", hidden_key, r[4]) == 1 then
        refused[#refused + 1] = {r[1], "user_hidden"}
      elseif r[2] > 0 and caps_counted(caps, r[1]) >= r[2] then
        refused[#refused + 1] = {r[1], "frequency_cap"}
      end
    end
    local now_counted = {}
    if #refused == 0 then
      for _, r in ipairs(reservations or {}) do
        if r[2] > 0 then
          now_counted[#now_counted + 1] = {r[1], caps_count(caps, r[1], r[3])}
        end
      end
    end
    if #now_counted > 0 or entry or attempt > 1 then
      call("HSET", held_key, event_id, cjson.encode({attempt, now_counted}))
      call("ZADD", due_key, now_ms + ttl * 1000, event_id)
      wrote = true
    end
    if #refused > 0 then answers[i] = {"refused", refused} else answers[i] = "ok" end
  end
end
caps_write(caps)
if wrote then
  call("EXPIRE", held_key, ttl)
  call("EXPIRE", due_key, ttl)
  list(held_key, ttl)
  list(due_key, ttl)
end
return cjson.encode(answers)
