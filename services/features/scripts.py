"""Redis Lua scripts of the online features. Generated from :mod:`recpilot.featurespec` constants, so
the definitions live in one place; the key layout is described in :mod:`services.features.keys`.

APPLY is the write path: one call applies a batch of events from ONE source partition atomically,
skipping every event whose offset is at or below the offset stored for that partition, and stores the
new highest offset in the same script. Replaying any part of the stream after a crash therefore
changes nothing (exactly-once effects on top of Kafka's at-least-once delivery).

Every call touches the keys of one shard (keys.py), whose head is ARGV[1]; KEYS[1] names the shard's
offsets key so that a Redis Cluster client sends the call to the node of that slot. ARGV[8] is the
mode: ``b`` applies both sides of each event (one shard: the user's and the item's keys are the same
shard's), ``i`` only the item side (item counts, buckets, metadata, popularity, change log) of the
events whose item is in the shard, ``u`` only the user side (user hash, recent lists, affinity,
session, co-visitation partials) of those whose user is. With several shards the writer runs the
``i`` calls of a batch first: each returns, per event, the category the item had after it (for a
skipped event, the one its journal kept), which the ``u`` calls take as the event's 10th field for
the user's category affinity -- the one value the user side reads from the item side. Each side
keeps its own offsets (``i|`` / ``u|`` fields), so either side's replay is skipped on its own.
After the events (ARGV[HDR + 1]) comes the offset the calling writer stored in that field itself
(-1: none yet); when Redis holds less, the store lost acknowledged writes and APPLY writes nothing and
replies ``STALE <stored> <written>`` (the worker restarts and reads those events again).

APPLY also bounds what idle users leave behind: the keys of every user it writes get the TTL of
ARGV[7] (seconds of idle time; 0 = none) once per call, so a user's keys expire together after that
long without an event. And it keeps the catalogue's change log: an item that is new or whose category,
price or title changed is put in the ``ichg`` zset with the next value of the ``iver`` counter, so
a reader that remembers the highest value it saw reads only what changed since (see keys.py).

FETCH is the read path: the user's features and, per item, the counts plus the 1 h / 24 h sliding
window sums computed server-side from per-hour and per-minute buckets -- one round trip.
"""

from __future__ import annotations

from recpilot import featurespec as fs
from services.features import keys

# Fields of each event in APPLY's JSON argument (after the header arguments).
APPLY_FIELDS = ("offset", "event_type", "user_id", "item_id", "session_id", "timestamp_ms", "price",
                "category", "title")
APPLY_HEADER = 9

_LUA_COUNT = ", ".join(f"{name}='{field}'" for name, field in fs.COUNT_FIELD.items())
_LUA_WEIGHT = ", ".join(f"{name}={w!r}" for name, w in fs.EVENT_WEIGHTS.items())
_LUA_POP = ", ".join(f"{name}={w!r}" for name, w in fs.POPULARITY_WEIGHTS.items())
_LUA_USER_KEYS = ", ".join(f"'{k}'" for k in keys.USER_KEYS)
_WINDOW_MIN = max(fs.WINDOWS_S.values()) * 1000 // fs.BUCKET_MS

APPLY = r"""
local P = ARGV[1]
local offkey = P .. 'off'
local offfield = ARGV[2]
local recent_len = tonumber(ARGV[3])
local half = tonumber(ARGV[4])
local sess_len = tonumber(ARGV[5])
local cv_max = tonumber(ARGV[6])
local user_ttl = tonumber(ARGV[7])
-- 'b': both sides (one shard); 'i': the item side only; 'u': the user side only (category given per event)
local mode = ARGV[8]
local jr_floor = ARGV[9]
local HDR = %(hdr)d
local BUCKET_MS = %(bucket_ms)d
local WINDOW_MIN = %(window_min)d
local COUNT = {%(count)s}
local WEIGHT = {%(weight)s}
local POPW = {%(pop)s}
local RECENT = {VIEW='rv:', CLICK='rc:', PURCHASE='rp:'}
local USER_KEYS = {%(user_keys)s}
local do_item = mode ~= 'u'
local do_user = mode ~= 'i'

local function fint(x) return string.format('%%.0f', x) end

local function trim_covisit(key)
  if redis.call('ZCARD', key) > 2 * cv_max then
    redis.call('ZREMRANGEBYRANK', key, 0, -(cv_max + 1))
  end
end

local function prune(bkey, bmax)
  local limit = bmax - WINDOW_MIN
  local doomed = {}
  for _, f in ipairs(redis.call('HKEYS', bkey)) do
    local kind, num = string.match(f, '^(%%a):%%a+:(%%-?%%d+)$')
    if kind == 'm' and tonumber(num) <= limit then
      doomed[#doomed + 1] = f
    elseif kind == 'h' and tonumber(num) * 60 + 59 <= limit then
      doomed[#doomed + 1] = f
    end
    if #doomed >= 500 then redis.call('HDEL', bkey, unpack(doomed)); doomed = {} end
  end
  if #doomed > 0 then redis.call('HDEL', bkey, unpack(doomed)) end
end

-- users written by this call (their keys get the idle TTL once, at the end) and items whose metadata changed
local touched = {}
local changed = {}

-- the item side of one event; returns the item's category after it ('' if none)
local function item_side(etype, field, iid, ts_s, ts, price, cat, title)
  local ikey = P .. 'i:' .. iid
  redis.call('HINCRBY', ikey, field, 1)
  local minute = math.floor(ts / BUCKET_MS)
  local bkey = P .. 'ib:' .. iid
  redis.call('HINCRBY', bkey, 'm:' .. field .. ':' .. fint(minute), 1)
  redis.call('HINCRBY', bkey, 'h:' .. field .. ':' .. fint(math.floor(minute / 60)), 1)
  local it = redis.call('HMGET', ikey, 'cat_ts', 'price_ts', 'last_event_ms', 'category', 'bmax', 'bpruned',
                        'price', 'title')
  -- a new item (no event time stored yet) goes into the catalogue's change log
  if not it[3] then changed[iid] = true end
  -- last seen category / price by event time (ties: the later event wins)
  if cat ~= '' and ((not it[1]) or tonumber(it[1]) <= ts) then
    redis.call('HSET', ikey, 'category', cat, 'cat_ts', ts_s)
    if it[4] ~= cat then changed[iid] = true end
    it[4] = cat
  end
  if price ~= '' and ((not it[2]) or tonumber(it[2]) <= ts) then
    redis.call('HSET', ikey, 'price', price, 'price_ts', ts_s)
    if it[7] ~= price then changed[iid] = true; it[7] = price end
  end
  if title ~= '' then
    redis.call('HSET', ikey, 'title', title)
    if it[8] ~= title then changed[iid] = true; it[8] = title end
  end
  if (not it[3]) or tonumber(it[3]) < ts then redis.call('HSET', ikey, 'last_event_ms', ts_s) end
  -- keep bucket memory bounded: once per hour of event time drop buckets no window can reach
  local bmax = tonumber(it[5] or '')
  if (not bmax) or minute > bmax then
    bmax = minute
    redis.call('HSET', ikey, 'bmax', fint(bmax))
  end
  local bpruned = tonumber(it[6] or '')
  if not bpruned then
    redis.call('HSET', ikey, 'bpruned', fint(bmax))
  elseif bmax - bpruned >= 60 then
    prune(bkey, bmax)
    redis.call('HSET', ikey, 'bpruned', fint(bmax))
  end
  -- popularity (all items of this shard, and per category)
  local pw = POPW[etype]
  redis.call('ZINCRBY', P .. 'pop', pw, iid)
  local icat = it[4] or ''
  if icat ~= '' then redis.call('ZINCRBY', P .. 'popc:' .. icat, pw, iid) end
  return icat
end

-- the user side of one event (``icat``: the category of its item after the event, '' if none)
local function user_side(etype, field, uid, iid, sid, ts_s, ts, icat)
  local ukey = P .. 'u:' .. uid
  local u = redis.call('HMGET', ukey, 'session_id', 'last_event_ms')
  if sid ~= '' and u[1] ~= sid then
    redis.call('HSET', ukey, 'session_id', sid, 'session_events', 0)
    redis.call('DEL', P .. 'us:' .. uid)
  end
  touched[uid] = true
  redis.call('HINCRBY', ukey, 'events', 1)
  redis.call('HINCRBY', ukey, 'session_events', 1)
  if (not u[2]) or tonumber(u[2]) < ts then redis.call('HSET', ukey, 'last_event_ms', ts_s) end
  if not (field and iid ~= '') then return end

  if icat ~= '' then
    -- decayed category affinity: score * 2^(-(t - t0) / H) + weight
    local akey = P .. 'ua:' .. uid
    local cur = redis.call('HGET', akey, icat)
    local score, t0 = 0.0, ts
    if cur then
      local sep = string.find(cur, '|', 1, true)
      score = tonumber(string.sub(cur, 1, sep - 1))
      t0 = tonumber(string.sub(cur, sep + 1))
    end
    if ts > t0 then score = score * 2 ^ (-(ts - t0) / half) end
    local nt = t0
    if ts > t0 then nt = ts end
    redis.call('HSET', akey, icat, string.format('%%.17g', score + WEIGHT[etype]) .. '|' .. fint(nt))
  end

  -- recent lists, newest first, without repeats
  local rk = RECENT[etype]
  if rk then
    local lk = P .. rk .. uid
    redis.call('LREM', lk, 0, iid)
    redis.call('LPUSH', lk, iid)
    redis.call('LTRIM', lk, 0, recent_len - 1)
  end

  -- co-visitation: each new item of the session pairs with the session's earlier items
  -- (with several shards these are the user's shard's partial counts)
  local sk = P .. 'us:' .. uid
  local sess = redis.call('LRANGE', sk, 0, -1)
  local seen = false
  for _, j in ipairs(sess) do
    if j == iid then seen = true; break end
  end
  if not seen then
    local ck = P .. 'cv:' .. iid
    for _, j in ipairs(sess) do
      redis.call('ZINCRBY', ck, 1, j)
      local jk = P .. 'cv:' .. j
      redis.call('ZINCRBY', jk, 1, iid)
      trim_covisit(jk)
    end
    if #sess > 0 then trim_covisit(ck) end
    redis.call('LPUSH', sk, iid)
    redis.call('LTRIM', sk, 0, sess_len - 1)
  end
end

-- the item side's journal: categories of the events it applied, for a user side replayed after a crash
local jkey = nil
local journal = nil
local cats = {}
if mode == 'i' then
  jkey = P .. 'jr:' .. string.sub(offfield, 3)
  redis.call('ZREMRANGEBYSCORE', jkey, '-inf', '(' .. jr_floor)
end
local function journaled(off)
  if journal == nil then
    journal = {}
    for _, entry in ipairs(redis.call('ZRANGE', jkey, 0, -1)) do
      for _, oc in ipairs(cjson.decode(entry)) do journal[oc[1]] = oc[2] end
    end
  end
  return journal[off] or ''
end

local stored = tonumber(redis.call('HGET', offkey, offfield) or '-1')
-- the offset the calling writer stored here itself (ARGV[HDR + 2], -1: none): less here means the
-- store lost acknowledged writes; refuse, so that the writer reads those events again
local written = tonumber(ARGV[HDR + 2] or '-1')
if written > stored then return redis.error_reply('STALE ' .. fint(stored) .. ' ' .. fint(written)) end
local maxoff = stored
local applied = 0
local firstoff = nil
-- the events: one JSON array of [offset, type, user, item, session, ts, price, category, title (, item category)]
-- (one argument instead of nine per event: far less client-side packing)
local evs = cjson.decode(ARGV[HDR + 1])
for _, e in ipairs(evs) do
  local off = tonumber(e[1])
  local etype, uid, iid = e[2], e[3], e[4]
  local field = COUNT[etype]
  if off > stored then
    applied = applied + 1
    if off > maxoff then maxoff = off end
    local ts_s = e[6]
    local ts = tonumber(ts_s)
    local icat = ''
    if do_item and field and iid ~= '' then
      icat = item_side(etype, field, iid, ts_s, ts, e[7], e[8], e[9])
      if mode == 'i' then
        cats[#cats + 1] = {e[1], icat}
        if firstoff == nil then firstoff = off end
      end
    elseif mode == 'u' then
      icat = e[10] or ''
    end
    if do_user then user_side(etype, field, uid, iid, e[5], ts_s, ts, icat) end
  elseif mode == 'i' and field and iid ~= '' then
    cats[#cats + 1] = {e[1], journaled(e[1])}  -- applied before: the category it had then
  end
end
if user_ttl > 0 then
  for uid in pairs(touched) do
    for _, k in ipairs(USER_KEYS) do redis.call('EXPIRE', P .. k .. uid, user_ttl) end
  end
end
if next(changed) then
  -- one version for the whole call: a reader sees all of its changes or none
  local ver = redis.call('INCR', P .. '%(iver)s')
  local args = {}
  for iid in pairs(changed) do args[#args + 1] = ver; args[#args + 1] = iid end
  redis.call('ZADD', P .. '%(ichg)s', unpack(args))
end
if maxoff > stored then redis.call('HSET', offkey, offfield, fint(maxoff)) end
if mode == 'i' then
  if firstoff ~= nil then
    -- scored by its highest offset: trimmed once a batch starts above all of its events
    local mine = {}
    for _, oc in ipairs(cats) do
      if tonumber(oc[1]) >= firstoff then mine[#mine + 1] = oc end
    end
    redis.call('ZADD', jkey, fint(maxoff), cjson.encode(mine))
  end
  return {applied, cjson.encode(cats)}
end
return applied
""" % {"hdr": APPLY_HEADER, "bucket_ms": fs.BUCKET_MS, "window_min": _WINDOW_MIN,
       "count": _LUA_COUNT, "weight": _LUA_WEIGHT, "pop": _LUA_POP, "user_keys": _LUA_USER_KEYS,
       "iver": keys.CATALOGUE_VERSION, "ichg": keys.CATALOGUE_CHANGES}

_WINDOWS = sorted(fs.WINDOWS_S.items(), key=lambda kv: kv[1])
_LUA_WINDOWS = ", ".join(str(secs * 1000 // fs.BUCKET_MS) for _, secs in _WINDOWS)
_LUA_FIELDS = ", ".join(f"'{f}'" for f in fs.COUNT_FIELDS)
ITEM_FIELDS = (*fs.COUNT_FIELDS, "category", "price", "last_event_ms")
_LUA_ITEM_FIELDS = ", ".join(f"'{f}'" for f in ITEM_FIELDS)
# Order of the window sums FETCH returns per item.
WINDOW_KEYS = tuple(f"{f}_{w}" for f in fs.COUNT_FIELDS for w, _ in _WINDOWS)

FETCH = r"""
local P = ARGV[1]
local uid = ARGV[2]
local now = tonumber(ARGV[3])
local BUCKET_MS = %(bucket_ms)d
local WINDOWS = {%(windows)s}
local FIELDS = {%(fields)s}
local nowb = math.floor(now / BUCKET_MS)
local function fint(x) return string.format('%%.0f', x) end

-- Bucket field names whose sum is the window (start, nowb] of one count field:
-- whole hours inside the window, plus minutes at its two ragged edges.
local function window_fields(field, minutes, out)
  local start = nowb - minutes
  local hs = math.floor((start + 1 + 59) / 60)
  local he = math.floor((nowb + 1) / 60) - 1
  if hs > he then
    for m = start + 1, nowb do out[#out + 1] = 'm:' .. field .. ':' .. fint(m) end
  else
    for m = start + 1, hs * 60 - 1 do out[#out + 1] = 'm:' .. field .. ':' .. fint(m) end
    for h = hs, he do out[#out + 1] = 'h:' .. field .. ':' .. fint(h) end
    for m = (he + 1) * 60, nowb do out[#out + 1] = 'm:' .. field .. ':' .. fint(m) end
  end
  return out
end

-- How many bucket names window_fields returns for a window (the same for every field).
local function window_count(minutes)
  local start = nowb - minutes
  local hs = math.floor((start + 1 + 59) / 60)
  local he = math.floor((nowb + 1) / 60) - 1
  if hs > he then return minutes end
  return math.max(0, hs * 60 - 1 - start) + (he - hs + 1) + math.max(0, nowb - (he + 1) * 60 + 1)
end

-- per (field, window) the list of bucket names: built on first use only (a busy item), since
-- building ~800 names costs far more than a user-only or quiet-items read
local plan = nil
local function get_plan()
  if plan == nil then
    plan = {}
    for fi, f in ipairs(FIELDS) do
      for _, w in ipairs(WINDOWS) do
        plan[#plan + 1] = {w, window_fields(f, w, {}), fi}
      end
    end
  end
  return plan
end
local nplan = #FIELDS * #WINDOWS

local out = {}
if uid ~= '' then
  out[1] = redis.call('HGETALL', P .. 'u:' .. uid)
  out[2] = redis.call('LRANGE', P .. 'rv:' .. uid, 0, -1)
  out[3] = redis.call('LRANGE', P .. 'rc:' .. uid, 0, -1)
  out[4] = redis.call('LRANGE', P .. 'rp:' .. uid, 0, -1)
  out[5] = redis.call('HGETALL', P .. 'ua:' .. uid)
else
  out[1], out[2], out[3], out[4], out[5] = {}, {}, {}, {}, {}
end
-- total number of bucket names the plan would look up for one item
local plan_size = 0
for _, w in ipairs(WINDOWS) do plan_size = plan_size + #FIELDS * window_count(w) end
local field_index = {}
for fi, f in ipairs(FIELDS) do field_index[f] = fi end

for i = 4, #ARGV do
  local iid = ARGV[i]
  local vals = redis.call('HMGET', P .. 'i:' .. iid, %(item_fields)s)
  local sums = {}
  for k = 1, nplan do sums[k] = 0 end
  local last = tonumber(vals[7] or '')
  local bkey = P .. 'ib:' .. iid
  -- buckets exist only up to the item's newest event: nothing to add if it is older than every window
  if last and math.floor(last / BUCKET_MS) > nowb - WINDOWS[#WINDOWS] then
    if redis.call('HLEN', bkey) <= plan_size then
      -- few buckets (most items): scan them all, minute buckets only (they are exact)
      local flat = redis.call('HGETALL', bkey)
      for j = 1, #flat, 2 do
        local kind, f, num = string.match(flat[j], '^(%%a):(%%a+):(%%-?%%d+)$')
        if kind == 'm' then
          local b = tonumber(num)
          local fi = field_index[f]
          if fi and b <= nowb then
            local c = tonumber(flat[j + 1])
            for wi, w in ipairs(WINDOWS) do
              if b > nowb - w then
                local k = (fi - 1) * #WINDOWS + wi
                sums[k] = sums[k] + c
              end
            end
          end
        end
      end
    else
      -- many buckets (busy items): look up exactly the hours and edge minutes of each window
      for k, p in ipairs(get_plan()) do
        local total = tonumber(vals[p[3]] or '0')
        if total and total > 0 and math.floor(last / BUCKET_MS) > nowb - p[1] then
          local s = 0
          for _, c in ipairs(redis.call('HMGET', bkey, unpack(p[2]))) do
            if c then s = s + tonumber(c) end
          end
          sums[k] = s
        end
      end
    end
  end
  out[#out + 1] = vals
  out[#out + 1] = sums
end
return out
""" % {"bucket_ms": fs.BUCKET_MS, "windows": _LUA_WINDOWS, "fields": _LUA_FIELDS,
       "item_fields": _LUA_ITEM_FIELDS}

# Top ``n`` of a popularity zset with ties broken by item id ascending (as featurespec's
# OfflineFeatureStore.top_popular): the top n, plus the smallest ids among those tied at the cut.
POPULAR = r"""
local n = tonumber(ARGV[1])
local top = redis.call('ZREVRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
if #top == 0 then return {{}, {}} end
local smin = top[#top]
local ties = redis.call('ZRANGEBYSCORE', KEYS[1], smin, smin, 'WITHSCORES', 'LIMIT', 0, n)
return {top, ties}
"""

# The catalogue change log of one shard at one instant: its version and the items changed after ARGV[1].
# KEYS: the shard's iver and ichg.
CHANGES = r"""
local ver = redis.call('GET', KEYS[1]) or '0'
return {ver, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')}
"""
