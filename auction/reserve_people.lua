-- Vickrey, the reservation split by hash slot (auction/budgets_split.py): one person's part.
-- Every key is the person's ({u:<user_id>}): one call per person of a chunk, pipelined.
--
-- KEYS[1] the person's key index (`{u:<id>}:keys`: it routes the call)
-- ARGV[1] JSON of the key templates, ARGV[2] TTL (s) of an event's counts, ARGV[3] user_id,
-- ARGV[4] JSON list, in auction order, of
--   {event_id, attempt, {{campaign_id, cap_max, cap_window_s, advertiser_id}, ...}}  check and count, or
--   {event_id, attempt}                                                               release.
--
-- Checks, per reservation: the person has not hidden the advertiser, and the campaign's
-- frequency-cap window (cap_max > 0) is below its max; when all pass, each capped campaign's
-- window is counted. What an event counted is kept in `{u:<id>}:held:<event_id>` = JSON
-- {attempt, {campaign_id, ...}}, and an attempt first takes back what an earlier one counted, so
-- each attempt is idempotent and a window counts each event once. A later attempt's counts
-- answer "stale" and change nothing (the caller is a zombie). A release counts nothing.
-- Per item: "ok", {"refused", {{campaign_id, "user_hidden"|"frequency_cap"}, ...}} (nothing
-- counted) or "stale". Every key written is listed in the person's key index, for `forget`.

local K, ttl, user = cjson.decode(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local items = cjson.decode(ARGV[4])
local listed = KEYS[1]
local call, format = redis.call, string.format
local hidden_key = format(K.hidden, user)
local anyone_hidden = call("EXISTS", hidden_key) == 1
local answers = {}

local function num(value)
  if value == false or value == nil then return 0 end
  return tonumber(value)
end

local function list(key, seconds)
  call("SADD", listed, key)
  if call("TTL", listed) < seconds then call("EXPIRE", listed, seconds) end
end

for i, item in ipairs(items) do
  local event_id, attempt, reservations = item[1], item[2], item[3]
  local mkey = format(K.held, user, event_id)
  local marker = call("GET", mkey)
  local marker_attempt, counted = 0, {}
  if marker then
    local m = cjson.decode(marker)
    marker_attempt, counted = m[1], m[2]
  end
  if marker_attempt > attempt then
    answers[i] = "stale"
  else
    for _, cid in ipairs(counted) do  -- take back the earlier attempt's counts
      local fkey = format(K.frequency, user, cid)
      if num(call("GET", fkey)) > 0 then call("DECR", fkey) end
    end
    local refused = {}
    for _, r in ipairs(reservations or {}) do
      if anyone_hidden and call("SISMEMBER", hidden_key, r[4]) == 1 then
        refused[#refused + 1] = {r[1], "user_hidden"}
      elseif r[2] > 0 and num(call("GET", format(K.frequency, user, r[1]))) >= r[2] then
        refused[#refused + 1] = {r[1], "frequency_cap"}
      end
    end
    local now_counted = {}
    if #refused == 0 then
      for _, r in ipairs(reservations or {}) do
        if r[2] > 0 then
          local fkey = format(K.frequency, user, r[1])
          if call("INCR", fkey) == 1 then
            call("EXPIRE", fkey, r[3])
            list(fkey, r[3])
          end
          now_counted[#now_counted + 1] = r[1]
        end
      end
    end
    if #now_counted > 0 or marker or attempt > 1 then
      call("SET", mkey, cjson.encode({attempt, now_counted}), "EX", ttl)
      list(mkey, ttl)
    end
    if #refused > 0 then answers[i] = {"refused", refused} else answers[i] = "ok" end
  end
end
return cjson.encode(answers)
