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
-- window is counted (in the person's `caps` hash, as reserve.lua counts it: campaign_id ->
-- "<count> <window end, ms>"; read once per call, written once at its end, with the windows
-- that ended dropped). What an event counted is kept in the person's `held` hash, field event_id =
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
local clock = call("TIME")
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local PRUNE = 32
local answers = {}
local wrote = false

-- The person's open cap windows: campaign_id -> {count, window end}; the ended ones, to drop.
local caps_key = format(K.caps, user)
local open, ended, expiry_before = {}, {}, 0
local got = call("HGETALL", caps_key)
for j = 1, #got, 2 do
  local count, ends = string.match(got[j + 1], "^(%d+) (%d+)$")
  count, ends = tonumber(count), tonumber(ends)
  if ends > expiry_before then expiry_before = ends end
  if ends > now_ms then open[got[j]] = {count, ends} else ended[#ended + 1] = got[j] end
end
local NONE = {0}
local CHUNK = 1000  -- values per HDEL/HSET (unpack works on the Lua stack; even: HSET's pairs stay whole)
local changed, dirty = {}, {}  -- campaigns whose window changed, in order
local function touch(cid)
  if not dirty[cid] then
    dirty[cid] = true
    changed[#changed + 1] = cid
  end
end

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
      local window = open[c[1]]
      if window and window[2] == c[2] and window[1] > 0 then
        window[1] = window[1] - 1
        touch(c[1])
      end
    end
    local refused = {}
    for _, r in ipairs(reservations or {}) do
      if anyone_hidden and call("SISMEMBER", hidden_key, r[4]) == 1 then
        refused[#refused + 1] = {r[1], "user_hidden"}
      elseif r[2] > 0 and (open[r[1]] or NONE)[1] >= r[2] then
        refused[#refused + 1] = {r[1], "frequency_cap"}
      end
    end
    local now_counted = {}
    if #refused == 0 then
      for _, r in ipairs(reservations or {}) do
        if r[2] > 0 then
          local window = open[r[1]]
          if window == nil or window[1] == 0 then  -- none open (or all given back): a new one
            window = {0, now_ms + r[3] * 1000}
            open[r[1]] = window
          end
          window[1] = window[1] + 1
          touch(r[1])
          now_counted[#now_counted + 1] = {r[1], window[2]}
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
if #changed > 0 then
  local fields, expiry = {}, expiry_before
  for _, cid in ipairs(changed) do
    local window = open[cid]
    if window[2] > expiry then expiry = window[2] end
    fields[#fields + 1] = cid
    fields[#fields + 1] = format("%d %d", window[1], window[2])
  end
  for first = 1, #ended, CHUNK do  -- HDEL first: a field reopened below is kept
    call("HDEL", caps_key, unpack(ended, first, math.min(first + CHUNK - 1, #ended)))
  end
  for first = 1, #fields, CHUNK do
    call("HSET", caps_key, unpack(fields, first, math.min(first + CHUNK - 1, #fields)))
  end
  if expiry > expiry_before then call("PEXPIREAT", caps_key, expiry) end
end
if wrote then
  call("EXPIRE", held_key, ttl)
  call("EXPIRE", due_key, ttl)
  list(held_key, ttl)
  list(due_key, ttl)
end
return cjson.encode(answers)
