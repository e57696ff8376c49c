-- Vickrey: atomic budget + frequency-cap reservation for a batch of auctions, idempotent per event.
--
-- ARGV[1] JSON of the key templates (core/keys.py `lua_templates`: the script builds no key itself),
-- ARGV[2] UTC day (YYYYMMDD), ARGV[3] TTL (s) of what is kept per event,
-- ARGV[4] the auctions, in order, as one flat JSON list (auction/budgets.py `entry_of`): for each,
--   event_id, "<partition>:<offset>", user_id, n (its reservations), then n times
--   campaign_id, charge_micros, need_micros, cap_max, cap_window_s, advertiser_id,
--   then its outcome's length and its event bucket (core/keys.py `event_bucket`).
--   Flat, because decoding a table per auction and per reservation cost more than the rest of
--   reading them (~4 µs per auction, against ~1.5 flat).
-- ARGV[5] blob id, ARGV[6] the blob: every auction's outcome end to end, in order (bytes the
-- script does not read: the worker's compact outcome, auction/records.py), each of its length;
-- ARGV[7...] ids of blobs to drop.
--
-- What is kept: per decided event, where it came from and where its outcome is
-- ("<partition>:<offset>\n@<blob id> <start> <length>"), as a field of one hash per period,
-- `{e}:seen:<period>` (event_id -> that), so a reused event_id is known for at least the TTL:
-- the periods are `period_s` long (the layout key `{e}:seen`, "<period_s> <legacy until, ms>",
-- written once: auction/budgets.py `check_layout`), and a call reads the current one and as many
-- before it as the TTL spans. One HSET per call instead of a key with its own expiry per event
-- (about 10 µs of Redis's CPU per event, and ~3/4 of the memory kept per event). Until the
-- layout's "legacy until", events are also looked up under their key of the older layout,
-- `{e:<bucket>}:<event_id>:outcome` (a string with its own TTL), which a version before this
-- one wrote. The outcomes themselves are kept in one blob per call, `{b:<blob id>}`. The caller
-- drops a blob (ARGV[7...] of a later call) once the Kafka transaction that published its outcomes has committed: an
-- outcome is only needed to replay a batch whose commit failed, and keeping every one for a day
-- would cost Redis ~0.5 KB per event (~2 KB when it was the encoded records).
-- For each auction, in order, all or nothing:
--   * an event already decided: {"replay", kept outcome} when it comes from the same record (a
--     batch replayed after a crash), {"committed"} when that record's outcome was dropped (it
--     was published and committed: the record is read again only after its offsets were reset),
--     {"dup", first src} when another record reused the event_id;
--   * else every reservation is checked (the person has not hidden the advertiser, remaining
--     daily and total budget >= need, the person's frequency-cap window below its max); if one
--     fails nothing is written and the answer is {"refused", {{campaign_id, reason}, ...}} so
--     the caller can re-run that auction without them;
--   * else charges are added, impressions counted, the outcome kept, and the answer is {"ok"}.
-- The reply is one JSON string: {answers, spends}, answers = {{i, answer}, ...} for each auction
-- whose answer is not {"ok"} (most are "ok": not written, not read back), spends =
-- {{campaign_id, today, total}, ...} for every campaign the batch looked at.
-- Frequency caps: one hash per person, {u:<user_id>}:caps, counted as caps.lua (put in front of
-- this script) says. `forget` erases it by name.
-- Money stays below 2^53 micros (validated at campaign apply), so Lua numbers are exact; it is
-- sent back as decimal strings because cjson prints numbers with 14 significant digits.
--
-- Speed: every redis.call costs about a microsecond of Lua overhead on top of the command, so
-- what can be read up front is read with one MGET per batch (kept outcomes, spend), the caps with
-- one HGETALL per person, and spend and caps are written once per campaign and per person at the end. The script runs atomically, so
-- the state it leaves is exactly that of reading and writing key by key.

local K, day, ttl = cjson.decode(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local flat = cjson.decode(ARGV[4])
local starts = {}  -- where each auction starts in `flat`: its event_id (`n` is 3 further)
do
  local at = 1
  while at <= #flat do
    starts[#starts + 1] = at
    at = at + 6 + 6 * flat[at + 3]
  end
end
local any_ok = false
local answers = {}
local DAY_TTL = 3 * 86400
local CHUNK = 1000  -- keys or fields per MGET/HMGET/EXISTS (unpack works on the Lua stack)
local call = redis.call
local find, sub, format = string.find, string.sub, string.format

local function blob_of(id) return format(K.blob, id) end

-- A kept value's answer for a record from the same source: the outcome, or "committed".
local function replayed(rest)
  if sub(rest, 1, 1) ~= "@" then return {"replay", rest} end  -- kept whole (before blobs)
  local id, first, length = string.match(rest, "^@(%S+) (%d+) (%d+)$")
  first, length = tonumber(first), tonumber(length)
  local outcome = call("GETRANGE", blob_of(id), first, first + length - 1)
  if #outcome ~= length then return {"committed"} end
  return {"replay", outcome}
end

local function num(value)
  if value == false or value == nil then return 0 end
  return tonumber(value)
end

-- The replies of `command` (MGET; HMGET with `key`) over `list`, as one list, in chunks.
local function read_chunks(command, key, list)
  local values, n = {}, #list
  for first = 1, n, CHUNK do
    local last = math.min(first + CHUNK - 1, n)
    local got
    if key then got = call(command, key, unpack(list, first, last)) else got = call(command, unpack(list, first, last)) end
    for j = 1, #got do values[first + j - 1] = got[j] end
  end
  return values
end

-- 0. Blobs whose outcomes are committed in Kafka.
for j = 7, #ARGV do call("UNLINK", blob_of(ARGV[j])) end

-- 1. What each event left before this batch: one HMGET per period the TTL spans.
local layout = call("GET", K.seen_layout)
local period_s, legacy_until = ttl, math.huge
if layout then
  local period, legacy = string.match(layout, "^(%d+) (%d+)$")
  period_s, legacy_until = tonumber(period), tonumber(legacy)
else  -- written by `check_layout` before a reserver's first call; if it went, older keys may be there
  call("SET", K.seen_layout, format("%d %d", ttl, now_ms + ttl * 1000), "NX")
end
local period_now = math.floor(now_ms / 1000 / period_s)
local periods_back = math.ceil(ttl / period_s)  -- an event decided that many periods ago may be within the TTL
local seen_now = format(K.seen, period_now)
local ids, hkeys, kept_before = {}, {}, {}  -- event_id, hidden-advertisers key, kept value of each auction
for i, p in ipairs(starts) do
  ids[i] = flat[p]
  hkeys[i] = format(K.hidden, flat[p + 2])
end
for back = 0, periods_back do
  local got = read_chunks("HMGET", format(K.seen, period_now - back), ids)
  for i = 1, #ids do
    if got[i] and not kept_before[i] then kept_before[i] = got[i] end
  end
end
if now_ms < legacy_until then
  local missing, okeys = {}, {}
  for i, p in ipairs(starts) do
    if not kept_before[i] then
      missing[#missing + 1] = i
      okeys[#okeys + 1] = format(K.outcome, flat[p + 5 + 6 * flat[p + 3]], flat[p])
    end
  end
  local got = read_chunks("MGET", nil, okeys)
  for j, i in ipairs(missing) do
    if got[j] then kept_before[i] = got[j] end
  end
end

-- 2. Everything the undecided events will check: budgets and spend of their campaigns,
-- their people's caps, and whether any of their people hid an advertiser.
local limits, today, total, day_was = {}, {}, {}, {}
local caps, capped = {}, {}  -- user_id -> caps_read of their hash; the users, in order
local cids, spend_keys, hidden_keys = {}, {}, {}
for i, p in ipairs(starts) do
  local count = flat[p + 3]
  if not kept_before[i] and count > 0 then
    local user = flat[p + 2]
    hidden_keys[#hidden_keys + 1] = hkeys[i]
    for r = p + 4, p + 6 * count, 6 do  -- each reservation: campaign_id at r, cap_max at r + 3
      local cid = flat[r]
      if limits[cid] == nil then
        limits[cid] = false
        cids[#cids + 1] = cid
        spend_keys[#spend_keys + 1] = format(K.spend_day, cid, day)
        spend_keys[#spend_keys + 1] = format(K.spend_total, cid)
      end
      if flat[r + 3] > 0 and caps[user] == nil then
        caps[user] = caps_read(format(K.caps, user))
        capped[#capped + 1] = user
      end
    end
  end
end
for _, cid in ipairs(cids) do
  local l = call("HMGET", format(K.budget, cid), "daily_micros", "total_micros")
  if l[1] and l[2] then limits[cid] = {tonumber(l[1]), tonumber(l[2])} end
end
local spent = read_chunks("MGET", nil, spend_keys)
for j, cid in ipairs(cids) do
  today[cid] = num(spent[2 * j - 1])
  total[cid] = num(spent[2 * j])
  day_was[cid] = today[cid]
end
local anyone_hidden = false
for first = 1, #hidden_keys, CHUNK do
  if call("EXISTS", unpack(hidden_keys, first, math.min(first + CHUNK - 1, #hidden_keys))) > 0 then
    anyone_hidden = true
    break
  end
end

-- 3. The auctions, in order.
local touched, seen, charged = {}, {}, {}
local decided = {}  -- event_id -> what this call kept for it (read for duplicates only)
local seen_fields = {}  -- event_id, kept value, ... for this period's hash
local blob_at = 0  -- where auction i's outcome starts in the blob
for i, p in ipairs(starts) do
  local src, user, count = flat[p + 1], flat[p + 2], flat[p + 3]
  local length = flat[p + 4 + 6 * count]
  local start = blob_at
  blob_at = blob_at + length
  local kept = kept_before[i] or decided[ids[i]]
  if kept then
    local sep = find(kept, "\n", 1, true)
    local kept_src = sub(kept, 1, sep - 1)
    if kept_src == src then
      answers[#answers + 1] = {i, replayed(sub(kept, sep + 1))}
    else
      answers[#answers + 1] = {i, {"dup", kept_src}}
    end
  else
    local refused = {}
    local hkey = hkeys[i]
    local last = p + 6 * count  -- the last reservation's campaign_id is at `last - 2`
    local any_hidden = anyone_hidden and count > 0 and call("EXISTS", hkey) == 1
    for r = p + 4, last, 6 do
      local cid, need, cap_max = flat[r], flat[r + 2], flat[r + 3]
      if not seen[cid] then
        seen[cid] = true
        touched[#touched + 1] = cid
      end
      local limit = limits[cid]
      if any_hidden and call("SISMEMBER", hkey, flat[r + 5]) == 1 then
        refused[#refused + 1] = {cid, "user_hidden"}
      elseif not limit or today[cid] + need > limit[1] or total[cid] + need > limit[2] then
        refused[#refused + 1] = {cid, "budget"}
      elseif cap_max > 0 and caps_counted(caps[user], cid) >= cap_max then
        refused[#refused + 1] = {cid, "frequency_cap"}
      end
    end
    if #refused > 0 then
      answers[#answers + 1] = {i, {"refused", refused}}
    else
      for r = p + 4, last, 6 do
        local cid, charge = flat[r], flat[r + 1]
        if charge > 0 then
          today[cid] = today[cid] + charge
          total[cid] = total[cid] + charge
          charged[cid] = true
        end
        if flat[r + 3] > 0 then caps_count(caps[user], cid, flat[r + 4]) end
      end
      local where = format("%s\n@%s %d %d", src, ARGV[5], start, length)
      decided[ids[i]] = where
      seen_fields[#seen_fields + 1] = ids[i]
      seen_fields[#seen_fields + 1] = where
      any_ok = true
    end
  end
end

-- Where each decided event's outcome is, in this period's hash, which goes when the last period
-- that reads it ends (UNLINK frees the one before in the background: a big hash, not on expiry's
-- clock); the outcomes, kept a little longer than the events that point to them.
if any_ok then
  caps_chunks("HSET", seen_now, seen_fields)  -- caps.lua's: pairs stay whole
  call("EXPIREAT", seen_now, (period_now + periods_back + 1) * period_s + 60)
  call("UNLINK", format(K.seen, period_now - periods_back - 1))
  call("SET", blob_of(ARGV[5]), ARGV[6], "EX", ttl + 60)
end

-- 4. Caps, once per person counted.
for _, user in ipairs(capped) do caps_write(caps[user]) end

-- 5. Spend, once per charged campaign: what INCRBY charge by charge would have left, with the
-- day key's expiry set when its spend started from nothing.
local spends = {}
for j, cid in ipairs(touched) do
  local t, s = format("%d", today[cid]), format("%d", total[cid])
  if charged[cid] then
    local day_key = format(K.spend_day, cid, day)
    if day_was[cid] == 0 then
      call("SET", day_key, t, "EX", DAY_TTL)
    else
      call("SET", day_key, t, "KEEPTTL")
    end
    call("SET", format(K.spend_total, cid), s, "KEEPTTL")
  end
  spends[j] = {cid, t, s}
end
return cjson.encode({answers, spends})
