-- Vickrey: atomic budget + frequency-cap reservation for a batch of auctions, idempotent per event.
--
-- ARGV[1] namespace, ARGV[2] UTC day (YYYYMMDD), ARGV[3] outcome TTL (s),
-- ARGV[4] JSON list of auctions, in order:
--   {e = event_id, src = "<partition>:<offset>", u = user_id,
--    r = {{campaign_id, charge_micros, need_micros, cap_max, cap_window_s, advertiser_id}, ...}}
-- ARGV[4 + i] the outcome of auction i: the exact bytes to publish, kept for replays.
-- For each auction, in order, all or nothing:
--   * an event already decided: {"replay", kept outcome} when it comes from the same record (a
--     batch replayed after a crash), {"dup", first src} when another record reused the event_id;
--   * else every reservation is checked (the person has not hidden the advertiser, remaining
--     daily and total budget >= need, the person's frequency-cap window below its max); if one
--     fails nothing is written and the answer is {"refused", {{campaign_id, reason}, ...}} so
--     the caller can re-run that auction without them;
--   * else charges are added, impressions counted, the outcome kept, and the answer is {"ok"}.
-- The reply is one JSON string: {answers, spends}, spends = {{campaign_id, today, total}, ...}
-- for every campaign the batch looked at.
-- Per-person keys live under {u:<user_id>} and are listed in {u:<user_id>}:keys, so that
-- `forget` can erase them all without scanning the keyspace.
-- Money stays below 2^53 micros (validated at campaign apply), so Lua numbers are exact; it is
-- sent back as decimal strings because cjson prints numbers with 14 significant digits.

local ns, day, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local auctions = cjson.decode(ARGV[4])
local answers = {}
local DAY_TTL = 3 * 86400

-- Budget limits and spend, read once per campaign per batch and kept current here.
local limits, today, total, touched = {}, {}, {}, {}

local function ckey(cid, suffix)
  return ns .. ":{c:" .. cid .. "}:" .. suffix
end

local function num(value)
  if value == false or value == nil then return 0 end
  return tonumber(value)
end

local function load(cid)
  if limits[cid] == nil then
    local l = redis.call("HMGET", ckey(cid, "budget"), "daily_micros", "total_micros")
    if l[1] and l[2] then limits[cid] = {tonumber(l[1]), tonumber(l[2])} else limits[cid] = false end
    today[cid] = num(redis.call("GET", ckey(cid, "spend:day:" .. day)))
    total[cid] = num(redis.call("GET", ckey(cid, "spend:total")))
    touched[#touched + 1] = cid
  end
  return limits[cid]
end

for i, a in ipairs(auctions) do
  local okey = ns .. ":{e:" .. a.e .. "}:outcome"
  local kept = redis.call("GET", okey)
  if kept then
    local sep = string.find(kept, "\n", 1, true)
    local src = string.sub(kept, 1, sep - 1)
    if src == a.src then
      answers[i] = {"replay", string.sub(kept, sep + 1)}
    else
      answers[i] = {"dup", src}
    end
  else
    local refused = {}
    local ukey = ns .. ":{u:" .. a.u .. "}:"
    local any_hidden = #a.r > 0 and redis.call("EXISTS", ukey .. "hidden") == 1
    for _, r in ipairs(a.r) do
      local cid, need = r[1], r[3]
      local limit = load(cid)
      if any_hidden and redis.call("SISMEMBER", ukey .. "hidden", r[6]) == 1 then
        refused[#refused + 1] = {cid, "user_hidden"}
      elseif not limit or today[cid] + need > limit[1] or total[cid] + need > limit[2] then
        refused[#refused + 1] = {cid, "budget"}
      elseif r[4] > 0 and num(redis.call("GET", ukey .. "fc:" .. cid)) >= r[4] then
        refused[#refused + 1] = {cid, "frequency_cap"}
      end
    end
    if #refused > 0 then
      answers[i] = {"refused", refused}
    else
      for _, r in ipairs(a.r) do
        local cid, charge = r[1], r[2]
        if charge > 0 then
          local dkey = ckey(cid, "spend:day:" .. day)
          today[cid] = redis.call("INCRBY", dkey, charge)
          if today[cid] == charge then redis.call("EXPIRE", dkey, DAY_TTL) end
          total[cid] = redis.call("INCRBY", ckey(cid, "spend:total"), charge)
        end
        if r[4] > 0 then
          local fkey = ukey .. "fc:" .. cid
          if redis.call("INCR", fkey) == 1 then
            redis.call("EXPIRE", fkey, r[5])
            redis.call("SADD", ukey .. "keys", fkey)
            if redis.call("TTL", ukey .. "keys") < r[5] then
              redis.call("EXPIRE", ukey .. "keys", r[5])
            end
          end
        end
      end
      redis.call("SET", okey, a.src .. "\n" .. ARGV[4 + i], "EX", ttl)
      answers[i] = {"ok"}
    end
  end
end

local spends = {}
for j, cid in ipairs(touched) do
  spends[j] = {cid, string.format("%d", today[cid]), string.format("%d", total[cid])}
end
return cjson.encode({answers, spends})
