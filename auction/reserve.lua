-- Vickrey: atomic budget + frequency-cap reservation for a batch of auctions, idempotent per event.
--
-- ARGV[1] namespace, ARGV[2] JSON list of auctions:
--   {e = event_id, src = "<partition>:<offset>", day = "YYYYMMDD", ttl = seconds, u = user_id,
--    out = "<outcome to keep>",
--    r = {{campaign_id, charge_micros, need_micros, cap_max, cap_window_s, advertiser_id}, ...}}
-- For each auction, in order, all or nothing:
--   * an event already decided: {"replay", kept outcome} when it comes from the same record (a
--     batch replayed after a crash), {"dup", first src} when another record reused the event_id;
--   * else every reservation is checked (the person has not hidden the advertiser, remaining
--     daily and total budget >= need, the person's frequency-cap window below its max); if one
--     fails nothing is written and the answer is
--     {"refused", {{campaign_id, reason}, ...}} so the caller can re-run that auction without them;
--   * else charges are added, impressions counted, the outcome kept, and the answer is
--     {"ok", {{campaign_id, spend_today, spend_total}, ...}}.
-- Per-person keys live under {u:<user_id>} and are listed in {u:<user_id>}:keys, so that
-- `forget` can erase them all without scanning the keyspace.
-- Money stays below 2^53 micros (validated at campaign apply), so Lua numbers are exact.
-- Returns one JSON string (cjson) with the answers in input order.

local ns = ARGV[1]
local auctions = cjson.decode(ARGV[2])
local answers = {}
local DAY_TTL = 3 * 86400

local function ckey(cid, suffix)
  return ns .. ":{c:" .. cid .. "}:" .. suffix
end

-- cjson prints numbers with 14 significant digits: send money back as decimal strings.
local function money(value)
  return string.format("%d", value)
end

local function num(value)
  if value == false or value == nil then return 0 end
  return tonumber(value)
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
    local spends = {}
    local ukey = ns .. ":{u:" .. a.u .. "}:"
    local any_hidden = redis.call("EXISTS", ukey .. "hidden") == 1
    for j, r in ipairs(a.r) do
      local cid, need = r[1], r[3]
      local limits = redis.call("HMGET", ckey(cid, "budget"), "daily_micros", "total_micros")
      local today = num(redis.call("GET", ckey(cid, "spend:day:" .. a.day)))
      local total = num(redis.call("GET", ckey(cid, "spend:total")))
      if any_hidden and redis.call("SISMEMBER", ukey .. "hidden", r[6]) == 1 then
        refused[#refused + 1] = {cid, "user_hidden"}
      elseif not limits[1] or not limits[2] then
        refused[#refused + 1] = {cid, "budget"}
      elseif today + need > tonumber(limits[1]) or total + need > tonumber(limits[2]) then
        refused[#refused + 1] = {cid, "budget"}
      elseif r[4] > 0 and num(redis.call("GET", ukey .. "fc:" .. cid)) >= r[4] then
        refused[#refused + 1] = {cid, "frequency_cap"}
      end
      spends[j] = {cid, money(today), money(total)}
    end
    if #refused > 0 then
      answers[i] = {"refused", refused}
    else
      for j, r in ipairs(a.r) do
        local cid, charge = r[1], r[2]
        if charge > 0 then
          local dkey = ckey(cid, "spend:day:" .. a.day)
          spends[j][2] = money(redis.call("INCRBY", dkey, charge))
          redis.call("EXPIRE", dkey, DAY_TTL)
          spends[j][3] = money(redis.call("INCRBY", ckey(cid, "spend:total"), charge))
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
      redis.call("SET", okey, a.src .. "\n" .. a.out, "EX", a.ttl)
      answers[i] = {"ok", spends}
    end
  end
end
return cjson.encode(answers)
