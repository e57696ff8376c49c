-- Vickrey CTR feedback: add one batch's impression and click counts to the campaigns' CTR hashes,
-- exactly once per input record: the batch carries, per input partition, the position it expects
-- Redis to hold (the next offset applied so far, "" when none) and the position after it. If any
-- expected position differs (a replay of records already counted, or another process took the
-- partition) nothing is written and the answer is "moved"; else every HINCRBY and the new
-- positions are written together and the answer is "ok".
--
-- ARGV[1] the positions hash key, ARGV[2] JSON {"p": {{field, expected, next}, ...},
--                                               "c": {{ctr_key, impressions, clicks}, ...}}
local key = ARGV[1]
local batch = cjson.decode(ARGV[2])
for _, p in ipairs(batch.p) do
  local current = redis.call("HGET", key, p[1]) or ""
  if current ~= p[2] then
    return "moved"
  end
end
for _, c in ipairs(batch.c) do
  if c[2] > 0 then redis.call("HINCRBY", c[1], "impressions", c[2]) end
  if c[3] > 0 then redis.call("HINCRBY", c[1], "clicks", c[3]) end
end
for _, p in ipairs(batch.p) do
  redis.call("HSET", key, p[1], p[3])
end
return "ok"
