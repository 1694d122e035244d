-- Hands batches of one partition to the consumers: round-robin across accounts, within
-- each account's processing limit and each action's pace, and never more than the
-- consumers can take (`maxOutstanding` entries in the work stream, delivered or not).
--
-- Accounts with work wait in `ready`, scored by the dispatch turn that last served them,
-- so the least recently served goes first and every pass gives each account at most one
-- batch. An account's actions wait in its queue, oldest first. An account without budget
-- is skipped, not waited on: no consumer ever holds a batch waiting for budget.
--
-- Budgets are GCRA over records: one record costs 60000 / limit ms of the account's
-- theoretical arrival time (TAT), and a batch may go when the TAT, after it, is at most
-- max(batch, burst) records' worth (plus SLACK_MS) ahead of now. Time is Redis' own clock,
-- so every dispatcher in every consumer process shares one timeline. SLACK_MS lets a batch
-- go a moment before its exact time: a dispatcher always wakes a little late, and without
-- it every late wake-up would be lost from the budget and the long-run rate would fall
-- short of the limit.
--
-- Per-account and per-action keys are derived from `prefix` (the partition's
-- "<prefix>:{n}:"), so they share the partition's hash slot; Redis Cluster runs this as
-- long as that holds, which the key layout guarantees.
--
-- KEYS: ready, dispatch, work
-- ARGV: prefix, defaultRecordsPerMinute, burstSeconds, maxOutstanding, maxGrants
-- Returns {granted, waitMs}: waitMs is how soon a batch held back by a budget or pace
-- could go (-1: none is).
local now = math.floor(clock_ms())
local prefix = ARGV[1]
local default_rpm = tonumber(ARGV[2])
local burst_seconds = tonumber(ARGV[3])
local room = tonumber(ARGV[4]) - redis.call('XLEN', KEYS[3])
local max_grants = tonumber(ARGV[5])
local granted = 0
local wait = -1
local SLACK_MS = 100
local MAX_ACCOUNTS = 1000

local function hold_until(at)
  local ms = math.ceil(at - now)
  if wait < 0 or ms < wait then
    wait = ms
  end
end

local function retire_if_idle(account, queue)
  if redis.call('ZCARD', queue) == 0 then
    redis.call('ZREM', KEYS[1], account)
  end
end

-- The next batch of an action: batches parked by a pause go first, lowest number first.
local function next_batch(action, fields, parked_key)
  local parked = redis.call('SMEMBERS', parked_key)
  if #parked > 0 then
    local lowest = tonumber(parked[1])
    for i = 2, #parked do
      lowest = math.min(lowest, tonumber(parked[i]))
    end
    return lowest, true
  end
  local batches = tonumber(fields[1] or '0')
  local dispatched = tonumber(fields[2] or fields[1] or '0')
  if dispatched < batches then
    return dispatched, false
  end
  return nil, false
end

-- Puts one batch in the work stream and moves the action and its account along.
local function hand_out(account, queue, action, meta, parked_key, batch, from_parked)
  redis.call('XADD', KEYS[3], '*', 'action', action, 'batch', batch)
  if from_parked then
    redis.call('SREM', parked_key, batch)
  else
    redis.call('HINCRBY', meta, 'dispatched', 1)
  end
  if next_batch(action, redis.call('HMGET', meta, 'batches', 'dispatched'), parked_key) == nil then
    redis.call('ZREM', queue, action)
  end
  if redis.call('ZCARD', queue) == 0 then
    redis.call('ZREM', KEYS[1], account)
  else
    redis.call('ZADD', KEYS[1], redis.call('HINCRBY', KEYS[2], 'turn', 1), account)
  end
end

local function try_account(account)
  local queue = prefix .. 'queue:' .. account
  local actions = redis.call('ZRANGE', queue, 0, 15)
  local rpm = tonumber(redis.call('HGET', prefix .. 'limits:' .. account, 'recordsPerMinute')
    or default_rpm)
  local emission = 60000 / rpm
  local budget_key = prefix .. 'budget:records:' .. account
  local account_tat = tonumber(redis.call('GET', budget_key) or '0')
  for _, action in ipairs(actions) do
    local meta = prefix .. 'meta:' .. action
    local parked_key = prefix .. 'parked:' .. action
    local f = redis.call('HMGET', meta, 'batches', 'dispatched', 'batchSize', 'records',
      'paused', 'cancelled', 'paceEmitMs', 'paceBurst', 'paceTat')
    local turn = batch_turn(f[5], f[6])
    local batch, from_parked = nil, false
    if turn ~= 'hold' then
      batch, from_parked = next_batch(action, f, parked_key)
    end
    if batch == nil then
      redis.call('ZREM', queue, action)
    elseif turn == 'settle' then
      -- Cancelled: its batch is settled unprocessed without reaching MongoDB, so it costs
      -- neither budget nor pace, but it still takes its turn and its room in the stream.
      hand_out(account, queue, action, meta, parked_key, batch, from_parked)
      return true
    else
      local size = tonumber(f[3] or '1000')
      local records = tonumber(f[4] or tostring(size * tonumber(f[1])))
      local cost = math.max(1, math.min(size, records - batch * size))
      local burst = math.max(cost, rpm * burst_seconds / 60)
      local account_at = gcra_ready_at(account_tat, now, cost, burst, emission) - SLACK_MS
      if account_at > now then
        -- No budget: none of this account's actions can go now. (A cancelled one further
        -- back waits its turn: walking the whole queue of every account out of budget
        -- would multiply the cost of a round.)
        hold_until(account_at)
        retire_if_idle(account, queue)
        return false
      else
        local pace_emit = tonumber(f[7] or '0')
        local pace_tat = tonumber(f[9] or '0')
        local pace_at = now
        if pace_emit > 0 then
          local pace_burst = math.max(cost, tonumber(f[8] or '0'))
          pace_at = gcra_ready_at(pace_tat, now, cost, pace_burst, pace_emit) - SLACK_MS
        end
        if pace_at > now then
          hold_until(pace_at) -- this action waits; the account's next one may go
        else
          local tat = gcra_charge(account_tat, now, cost, emission)
          redis.call('SET', budget_key, tostring(tat), 'PX', math.ceil(tat - now) + 60000)
          if pace_emit > 0 then
            redis.call('HSET', meta, 'paceTat', tostring(gcra_charge(pace_tat, now, cost, pace_emit)))
          end
          hand_out(account, queue, action, meta, parked_key, batch, from_parked)
          return true
        end
      end
    end
  end
  retire_if_idle(account, queue)
  return false
end

while room > 0 and granted < max_grants do
  -- Accounts without budget keep their place at the front, so look far enough past them.
  local accounts = redis.call('ZRANGE', KEYS[1], 0, MAX_ACCOUNTS - 1)
  local progress = false
  for _, account in ipairs(accounts) do
    if room <= 0 or granted >= max_grants then
      break
    end
    if try_account(account) then
      granted = granted + 1
      room = room - 1
      progress = true
    end
  end
  if not progress then
    break
  end
end
return {granted, wait}
