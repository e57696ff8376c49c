-- Vickrey: a person's frequency-cap windows, the one definition reserve.lua (one Redis) and
-- reserve_people.lua (a Redis Cluster) both count with. A script cannot import another: this
-- text is put in front of each (auction/budgets.py `with_caps`).
--
-- One hash per person, {u:<user_id>}:caps, campaign_id -> "<count> <window end, ms>" on Redis's
-- clock (core/keys.py `parse_cap`). A window opens at the impression that finds none open (or
-- one whose count was all given back) and ends window_s later; one that has ended counts nothing.
-- The hash is read once per call and written once at its end: the windows counted, those that
-- ended dropped (until the person's next write, it may hold some), and its expiry moved to its
-- last window's end when that grew.

local caps_clock = redis.call("TIME")
local now_ms = tonumber(caps_clock[1]) * 1000 + math.floor(tonumber(caps_clock[2]) / 1000)
local CAPS_CHUNK = 1000  -- values per HDEL/HSET (unpack works on the Lua stack; even: pairs stay whole)
local NO_WINDOW = {0}

-- The person's windows as read: the open ones, the ended ones (to drop) and the key's expiry.
local function caps_read(key)
  local got = redis.call("HGETALL", key)
  local person = {key = key, open = {}, ended = {}, expiry = 0, changed = {}, dirty = {}}
  for j = 1, #got, 2 do
    local count, ends = string.match(got[j + 1], "^(%d+) (%d+)$")
    count, ends = tonumber(count), tonumber(ends)
    if ends > person.expiry then person.expiry = ends end
    if ends > now_ms then
      person.open[got[j]] = {count, ends}
    else
      person.ended[#person.ended + 1] = got[j]
    end
  end
  return person
end

local function caps_touch(person, cid)
  if not person.dirty[cid] then
    person.dirty[cid] = true
    person.changed[#person.changed + 1] = cid
  end
end

-- Impressions counted in the campaign's open window (0: none open).
local function caps_counted(person, cid)
  return (person.open[cid] or NO_WINDOW)[1]
end

-- One more impression in the campaign's window (a new one when none is open); its end.
local function caps_count(person, cid, window_s)
  local window = person.open[cid]
  if window == nil or window[1] == 0 then
    window = {0, now_ms + window_s * 1000}
    person.open[cid] = window
  end
  window[1] = window[1] + 1
  caps_touch(person, cid)
  return window[2]
end

-- Give back one impression counted in the window that ends at `ends` (none if that one is over).
local function caps_give_back(person, cid, ends)
  local window = person.open[cid]
  if window and window[2] == ends and window[1] > 0 then
    window[1] = window[1] - 1
    caps_touch(person, cid)
  end
end

local function caps_chunks(command, key, list)
  for first = 1, #list, CAPS_CHUNK do
    redis.call(command, key, unpack(list, first, math.min(first + CAPS_CHUNK - 1, #list)))
  end
end

-- Write what changed (nothing when nothing did). HDEL first: a field reopened since is kept.
local function caps_write(person)
  local fields, expiry = {}, person.expiry
  for _, cid in ipairs(person.changed) do
    local window = person.open[cid]
    if window[2] > expiry then expiry = window[2] end
    fields[#fields + 1] = cid
    fields[#fields + 1] = string.format("%d %d", window[1], window[2])
  end
  if #fields == 0 then return end
  caps_chunks("HDEL", person.key, person.ended)
  caps_chunks("HSET", person.key, fields)
  if expiry > person.expiry then redis.call("PEXPIREAT", person.key, expiry) end
end

