-- Vickrey, the reservation split by hash slot (auction/budgets_split.py): the event's part.
-- Every key is an event's outcome key ({e:<bucket>}:<event_id>:outcome), all of one slot: one call per slot.
--
-- KEYS: the outcome key of each item, in order.
-- ARGV[1] "claim" or "final", ARGV[2] TTL (s) of what is kept per event, ARGV[3] JSON list, one per key:
--   claim: {src, {campaign_id, ...}}  the record ("<partition>:<offset>") and the campaigns this
--          attempt will hold;
--   final: {src, attempt, where}       where the outcome is kept ("@<blob id> <start> <length>").
--
-- The outcome key holds "<src>\n" followed by either where the decided outcome is kept (as
-- reserve.lua leaves it) or, while an attempt is in flight, "?" and the JSON {attempt, campaigns}:
-- the attempt number (1, 2, ... one per claim) and every campaign any attempt may have held for
-- the event, so that a later attempt (a replay after a crash, a re-run after a refusal) releases
-- what it does not hold again.
-- claim, per item: none kept: {"go", 1, {}}; an attempt in flight from the same record:
-- {"go", attempt + 1, campaigns of earlier attempts}; decided from the same record: {"kept", where};
-- another record's: {"dup", its src}.
-- final, per item: "ok" when the key still holds this attempt (or already holds `where`: a call
-- retried), else "stale" (a later attempt took over: this one is a zombie's, and publishes nothing).

local mode, ttl = ARGV[1], tonumber(ARGV[2])
local items = cjson.decode(ARGV[3])
local answers = {}
local call, find, sub = redis.call, string.find, string.sub

for i, item in ipairs(items) do
  local key, src = KEYS[i], item[1]
  local kept = call("GET", key)
  local kept_src, rest
  if kept then
    local sep = find(kept, "\n", 1, true)
    kept_src, rest = sub(kept, 1, sep - 1), sub(kept, sep + 1)
  end
  if mode == "claim" then
    if not kept then
      call("SET", key, src .. "\n?" .. cjson.encode({1, item[2]}), "EX", ttl)
      answers[i] = {"go", 1, {}}
    elseif kept_src ~= src then
      answers[i] = {"dup", kept_src}
    elseif sub(rest, 1, 1) == "?" then
      local pending = cjson.decode(sub(rest, 2))
      local attempt, prior = pending[1] + 1, pending[2]
      local union, seen = {}, {}
      for _, list in ipairs({prior, item[2]}) do
        for _, cid in ipairs(list) do
          if not seen[cid] then
            seen[cid] = true
            union[#union + 1] = cid
          end
        end
      end
      call("SET", key, src .. "\n?" .. cjson.encode({attempt, union}), "EX", ttl)
      answers[i] = {"go", attempt, prior}
    else
      answers[i] = {"kept", rest}
    end
  else
    local attempt, where = item[2], item[3]
    if kept and kept_src == src and rest == where then
      answers[i] = "ok"
    elseif kept and kept_src == src and sub(rest, 1, 1) == "?" and cjson.decode(sub(rest, 2))[1] == attempt then
      call("SET", key, src .. "\n" .. where, "EX", ttl)
      answers[i] = "ok"
    else
      answers[i] = "stale"
    end
  end
end
return cjson.encode(answers)
