-- Vickrey billing: charge one campaign's CPC clicks of a batch to its budget, idempotent per click.
-- Every key it touches is the campaign's (hash tag {c:<id>}), so on a Redis Cluster it runs on
-- that campaign's slot; the billing role calls it once per campaign of a batch, pipelined.
--
-- KEYS[1] the campaign's budget key (it routes the call; the script builds the others from the
-- templates, all in the same slot)
-- ARGV[1] JSON of the key templates (core/keys.py `lua_templates`), ARGV[2] UTC day "YYYYMMDD", ARGV[3] ttl seconds of the kept answers,
-- ARGV[4] JSON list of the campaign's clicks, in order: {{click_id, src "<partition>:<offset>", campaign_id, charge_micros}, ...}
-- ARGV[5] whether the namespace has its `reconciled` marker: "check" (a single Redis: look it up
-- here, atomically with the rest), or "1"/"0" as the caller read it just before (a cluster, where
-- the marker lives in another slot)
-- For each click, in order:
--   * already charged: {"replay", amount, over} when it comes from the same record (a batch replayed
--     after a crash: the first answer again, nothing charged twice), {"dup", first src} when another
--     record carries the same click_id (no second ledger entry);
--   * else, when the remaining daily and total budget both cover the charge, the charge is added to
--     the same spend keys the auction's reserve.lua uses: {"ok", amount, 0};
--     otherwise (or when the campaign has no budget stored) nothing is spent: {"ok", 0, 1} (overdelivery);
--   * but a campaign without a budget in a namespace without the `reconciled` marker is a Redis that
--     lost its state (docs/contract.md §9): {"wait"}, nothing written, so that the click is billed
--     against the spend `vickrey reconcile` restores rather than as an overdelivery of 0.
-- The answer is kept under the `billed` key of the campaign and click = "<src>\n<amount>\n<over>".
-- Money stays below 2^53 micros, so Lua numbers are exact; amounts go back as decimal strings.

local K, day, ttl = cjson.decode(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local clicks = cjson.decode(ARGV[4])
local answers = {}
local DAY_TTL = 3 * 86400


local marker = ARGV[5]
local function reconciled()
  if marker == "check" then return redis.call("EXISTS", K.reconciled) == 1 end
  return marker == "1"
end

local function num(value)
  if value == false or value == nil then return 0 end
  return tonumber(value)
end

for i, c in ipairs(clicks) do
  local click_id, src, cid, charge = c[1], c[2], c[3], c[4]
  local kkey = string.format(K.billed, cid, click_id)
  local kept = redis.call("GET", kkey)
  if kept then
    local first = string.find(kept, "\n", 1, true)
    local second = string.find(kept, "\n", first + 1, true)
    local kept_src = string.sub(kept, 1, first - 1)
    if kept_src == src then
      answers[i] = {"replay", string.sub(kept, first + 1, second - 1), string.sub(kept, second + 1)}
    else
      answers[i] = {"dup", kept_src}
    end
  else
    local amount, over = 0, 0
    local limits = {false, false}
    if charge > 0 then
      limits = redis.call("HMGET", string.format(K.budget, cid), "daily_micros", "total_micros")
    end
    if charge > 0 and not limits[1] and redis.call("EXISTS", string.format(K.budget, cid)) == 0
        and not reconciled() then
      answers[i] = {"wait"}
    elseif charge > 0 then
      local dkey = string.format(K.spend_day, cid, day)
      local tkey = string.format(K.spend_total, cid)
      local today = num(redis.call("GET", dkey))
      local total = num(redis.call("GET", tkey))
      if limits[1] and limits[2] and today + charge <= tonumber(limits[1]) and total + charge <= tonumber(limits[2]) then
        redis.call("INCRBY", dkey, charge)
        redis.call("EXPIRE", dkey, DAY_TTL)
        redis.call("INCRBY", tkey, charge)
        amount = charge
      else
        over = 1
      end
    end
    if answers[i] == nil then
      local money = string.format("%d", amount)
      redis.call("SET", kkey, src .. "\n" .. money .. "\n" .. over, "EX", ttl)
      answers[i] = {"ok", money, tostring(over)}
    end
  end
end
return cjson.encode(answers)
