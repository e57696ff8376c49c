-- Vickrey CTR feedback: add one campaign's impressions and clicks of a batch to its CTR hash,
-- exactly once per input record. Every key is the campaign's ({c:<id>}), so on a Redis Cluster it
-- runs on that campaign's slot; the feedback role calls it once per campaign of a batch, pipelined.
--
-- KEYS[1] the campaign's `ctr` hash, KEYS[2] its `ctr:at` hash: per input partition
-- ("<topic>:<partition>"), the next offset counted into this campaign.
-- ARGV[1] JSON list of {partition field, "impressions" | "clicks", {offsets, ascending}}: this
-- campaign's records of the batch.
-- A record at an offset below its partition's position was counted before (a batch read again
-- after a crash or a rewind, or by a process that also had the partition) and is skipped; the
-- others are counted and the position moves past them, in one atomic step.
-- Returns JSON {impressions counted, clicks counted}.
local ctr, at = KEYS[1], KEYS[2]
local counted = {impressions = 0, clicks = 0}
for _, entry in ipairs(cjson.decode(ARGV[1])) do
  local field, kind, offsets = entry[1], entry[2], entry[3]
  local position = tonumber(redis.call("HGET", at, field) or "-1")
  local n = 0
  for _, offset in ipairs(offsets) do
    if offset >= position then n = n + 1 end
  end
  if n > 0 then
    redis.call("HINCRBY", ctr, kind, n)
    redis.call("HSET", at, field, offsets[#offsets] + 1)
    counted[kind] = counted[kind] + n
  end
end
return cjson.encode({counted.impressions, counted.clicks})
