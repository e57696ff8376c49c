-- Vickrey, the reservation split by hash slot (auction/budgets_split.py): one campaign's part.
-- Every key is the campaign's ({c:<id>}): one call per campaign of a chunk, pipelined.
--
-- KEYS[1] the campaign's budget key (it routes the call; the others are built from the templates)
-- ARGV[1] JSON of the key templates (core/keys.py `lua_templates`), ARGV[2] UTC day (YYYYMMDD),
-- ARGV[3] TTL (s) of a hold, ARGV[4] campaign_id, ARGV[5] JSON list, in auction order, of
--   {event_id, attempt, charge_micros, need_micros}  hold: check the budget and charge, or
--   {event_id, attempt}                              release: hold nothing for this event.
--
-- A hold `{c:<id>}:hold:<event_id>` = "<attempt> <day> <charge>" is what this event's latest
-- attempt added to the campaign's spend. Setting it first takes back what an earlier attempt's
-- hold added, so each attempt's answer is idempotent and spend counts every event once, at its
-- latest attempt's charge. A hold of a later attempt than the caller's answers "stale" and
-- changes nothing: the caller is a zombie (a later attempt of the same record took over). A
-- release leaves a hold of 0 for the same reason.
-- Per item: "ok", "budget" (remaining daily or total budget below need, or no budget stored;
-- nothing held) or "stale". The reply is JSON {answers, spend today, spend total} (decimal strings:
-- money stays below 2^53 micros, so Lua numbers are exact, but cjson prints 14 digits).

local K, day, ttl, cid = cjson.decode(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local items = cjson.decode(ARGV[5])
local DAY_TTL = 3 * 86400
local call, format = redis.call, string.format

local function num(value)
  if value == false or value == nil then return 0 end
  return tonumber(value)
end

local limits = call("HMGET", KEYS[1], "daily_micros", "total_micros")
local daily_limit, total_limit = limits[1] and tonumber(limits[1]), limits[2] and tonumber(limits[2])
local day_key, total_key = format(K.spend_day, cid, day), format(K.spend_total, cid)
local today, total = num(call("GET", day_key)), num(call("GET", total_key))
local today_was, total_was = today, total
local answers = {}

for i, item in ipairs(items) do
  local hkey = format(K.hold, cid, item[1])
  local attempt, charge, need = item[2], item[3], item[4]
  local held = call("GET", hkey)
  local held_attempt, held_day, held_charge = 0, day, 0
  if held then
    local a, d, c = string.match(held, "^(%d+) (%d+) (%d+)$")
    held_attempt, held_day, held_charge = tonumber(a), d, tonumber(c)
  end
  if held_attempt > attempt then
    answers[i] = "stale"
  else
    if held_charge > 0 then  -- take back the earlier attempt's charge
      total = total - held_charge
      if held_day == day then
        today = today - held_charge
      else
        local old = format(K.spend_day, cid, held_day)
        if call("EXISTS", old) == 1 then call("DECRBY", old, held_charge) end
      end
    end
    if charge == nil then
      call("SET", hkey, format("%d %s 0", attempt, day), "EX", ttl)
      answers[i] = "ok"
    else
      -- A first attempt that holds nothing needs no key; any later one leaves its number, so that
      -- an earlier attempt's late step (a zombie's) finds it and is refused.
      local fence = held or attempt > 1
      if daily_limit and total_limit and today + need <= daily_limit and total + need <= total_limit then
        today, total = today + charge, total + charge
        if charge > 0 or fence then call("SET", hkey, format("%d %s %d", attempt, day, charge), "EX", ttl) end
        answers[i] = "ok"
      else
        if fence then call("SET", hkey, format("%d %s 0", attempt, day), "EX", ttl) end
        answers[i] = "budget"
      end
    end
  end
end

-- Spend, once: what INCRBY charge by charge would have left, with the day key's expiry set when
-- its spend started from nothing.
local t, s = format("%d", today), format("%d", total)
if today ~= today_was then
  if today_was == 0 then call("SET", day_key, t, "EX", DAY_TTL) else call("SET", day_key, t, "KEEPTTL") end
end
if total ~= total_was then call("SET", total_key, s, "KEEPTTL") end
return cjson.encode({answers, t, s})
