-- The event store's shared Lua, put in front of every script (infra/src/scripts.rs): an
-- event is appended, a feed told and a budget charged in one way in all of them.
--
-- The GCRA functions and `batch_turn` have Rust twins (`domain::rate::gcra`,
-- `domain::lifecycle::BatchTurn`), and tests (tests/tests/flow.rs) run both on the same
-- inputs: the rules are reasoned about and unit-tested in Rust, and applied here,
-- atomically, on Redis' clock.

-- Every script calls Redis through `call`, which refuses a key the caller did not give in
-- KEYS. Redis itself only notices an undeclared key when it lands in another slot of a
-- cluster, and then only on the day it does; this makes every run of every script, on one
-- node or a cluster, prove that the script touches only what it declared.
local DECLARED = {}
for _, key in ipairs(KEYS) do
  DECLARED[key] = true
end

-- Where the commands these scripts use name their keys, among the arguments after the
-- command: 'first', 'first two', 'all', or 'none'. A command missing here is refused, so
-- using a new one means saying where its keys are.
local KEY_ARGUMENTS = {
  DEL = 'all', EXISTS = 'all', RENAME = 'first two', TIME = 'none',
  GET = 'first', SET = 'first', PERSIST = 'first',
  HDEL = 'first', HEXISTS = 'first', HGET = 'first', HINCRBY = 'first', HMGET = 'first',
  HLEN = 'first', HSET = 'first', HSETNX = 'first',
  LLEN = 'first', LRANGE = 'first', LTRIM = 'first',
  SADD = 'first', SCARD = 'first', SMEMBERS = 'first', SREM = 'first',
  XACK = 'first', XADD = 'first', XDEL = 'first', XLEN = 'first', XPENDING = 'first',
  XRANGE = 'first', XREVRANGE = 'first',
  ZADD = 'first', ZCARD = 'first', ZRANGE = 'first', ZRANGEBYSCORE = 'first', ZREM = 'first',
  ZSCORE = 'first',
}

local function refuse_undeclared(command, key)
  if not DECLARED[key] then
    error('script touched undeclared key ' .. tostring(key) .. ' (' .. command .. ')')
  end
end

local function call(command, ...)
  local shape = KEY_ARGUMENTS[command]
  local args = {...}
  if shape == nil then
    error('script used ' .. command .. ', which the key guard in lib.lua does not know')
  elseif shape == 'first' then
    refuse_undeclared(command, args[1])
  elseif shape == 'first two' then
    refuse_undeclared(command, args[1])
    refuse_undeclared(command, args[2])
  elseif shape == 'all' then
    for _, key in ipairs(args) do
      refuse_undeclared(command, key)
    end
  end
  return redis.call(command, ...)
end

-- Now on Redis' clock, in (fractional) milliseconds: one timeline for every process.
local function clock_ms()
  local t = call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- The event types webhooks report (`domain::webhook::LIFECYCLE_EVENT_TYPES`, tested to
-- agree), and how many entries a partition's hooks stream keeps: a deployment without
-- deliverers must not grow it without bound (MAXLEN ~ trims whole nodes, cheaply).
local HOOK_TYPES = {
  Started = true, Paused = true, Resumed = true, CancelRequested = true, Completed = true,
}
local HOOKS_MAXLEN = 100000

-- One event of an action's stream, in the schema `EventEnvelope` reads back. A lifecycle
-- event is also put in the partition's hooks stream (`hooks`), which the webhook
-- deliverers read through their group: here, where every event is appended, so none can
-- skip it (a script that does not pass the key fails on its first event).
local function xadd_event(stream, hooks, action, seq, version, id, type, at, data)
  if hooks == nil then
    error('xadd_event needs the hooks stream key')
  end
  call('XADD', stream, '*', 'id', id, 'action', action, 'seq', seq,
    'v', version, 'type', type, 'at', at, 'data', data)
  if HOOK_TYPES[type] then
    call('XADD', hooks, 'MAXLEN', '~', HOOKS_MAXLEN, '*', 'action', action, 'seq', seq,
      'type', type, 'at', at)
  end
end

-- Tells the projectors that `action` has events up to `seq`.
local function announce(feed, action, seq)
  call('XADD', feed, '*', 'action', action, 'seq', seq)
end

-- GCRA keeps one number per bucket, its theoretical arrival time (TAT, ms; 0 = empty).
-- The TAT once `cost` units are charged at `interval` ms each.
local function gcra_charge(tat, now, cost, interval)
  return math.max(tat, now) + cost * interval
end

-- When `cost` units may go: the moment the TAT after them is `burst` units ahead of it.
local function gcra_ready_at(tat, now, cost, burst, interval)
  return math.max(tat, now) + (cost - burst) * interval
end

-- The TAT once `cost` units charged earlier are given back.
local function gcra_refund(tat, cost, interval)
  return tat - cost * interval
end

-- The work charged ahead of now, carried from one interval to another: the same work at
-- the new rate. A TAT already past is left as it is.
local function gcra_rescale(tat, now, old_interval, new_interval)
  if tat <= now then
    return tat
  end
  return now + (tat - now) * new_interval / old_interval
end

-- An account with work joins `ready` (scored by dispatch turn) at the turn of the latest
-- batch handed out: behind every account already waiting, so that leaving and joining
-- again (a pause and a resume) never moves it ahead of them. One already there keeps its
-- place.
local function join_ready(ready, dispatch, account)
  local turn = call('HGET', dispatch, 'turn') or '0'
  call('ZADD', ready, 'NX', turn, account)
end

-- What a batch of an action does when its turn comes, as `Facts::batch_turn` decides it
-- (its Rust twin, tested against this): 'settle' once cancelled (settled unprocessed, free
-- of budget), 'hold' while paused, else 'apply'. The arguments are the meta's `paused` and
-- `cancelled` fields as HMGET returns them.
local function batch_turn(paused, cancelled)
  if cancelled == '1' then
    return 'settle'
  end
  if paused == '1' then
    return 'hold'
  end
  return 'apply'
end

-- The facts `domain::lifecycle::decide` looks at, as `Facts::signature` spells them: one
-- character each for finished, cancelled, paused and waiting in the schedule, then the
-- pace as the meta holds it (as text: '' for an action of a build before it did). The scripts
-- that append a decision compare them with the ones it was made on, so no decision is
-- applied to facts it did not see. Equality, not rules: the rules are in Rust.
local function lifecycle_signature(meta, schedule, action)
  local f = call('HMGET', meta, 'batches', 'done', 'cancelled', 'paused', 'pace')
  local finished = tonumber(f[2] or '0') >= tonumber(f[1] or '0')
  local scheduled = call('ZSCORE', schedule, action) ~= false
  return (finished and 'F' or '-') .. (f[3] == '1' and 'C' or '-')
    .. (f[4] == '1' and 'P' or '-') .. (scheduled and 'S' or '-') .. ':' .. (f[5] or '')
end

