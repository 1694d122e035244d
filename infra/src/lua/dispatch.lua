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
-- The caller reads a page of `ready` and the head of each of those accounts' queues first
-- and declares every key of them (infra/src/flow.rs): a script that found its keys on its
-- own could not run on a Redis Cluster, and the key guard in lib.lua refuses it anywhere.
-- What changed since that read is judged here, atomically: accounts that left `ready` and
-- actions that left their queue are passed over, ones that arrived wait for the next call.
--
-- KEYS: ready, dispatch, work; per account: queue, limits, budget; then per action of
--       each account, in the same order: meta, parked
-- ARGV: defaultRecordsPerMinute, burstSeconds, maxOutstanding, maxGrants, passes (0: as
--       many as give batches; 1 when more accounts wait past this page, so that each gets
--       its batch before any gets a second), accountCount, then per account: account,
--       its score in `ready` as read, actionCount, action...
-- Returns {granted, waitMs, held}: waitMs is how soon a batch held back by a budget or
-- pace could go (-1: none is); held is how many of the given accounts are still in
-- `ready` where the caller read them, not served by this call (they keep their place at
-- its front, so the caller's next page starts after them), or -1 when this call stopped
-- for want of room or grants. An account whose score changed since the read was served by
-- another dispatcher meanwhile: it went to the back, and this call leaves it there.
local now = math.floor(clock_ms())
local default_rpm = tonumber(ARGV[1])
local burst_seconds = tonumber(ARGV[2])
local room = tonumber(ARGV[3]) - call('XLEN', KEYS[3])
local max_grants = tonumber(ARGV[4])
local max_passes = tonumber(ARGV[5])

-- The page of accounts, each with its declared keys and the head of its queue.
local accounts = {}
local next_key = 4 + 3 * tonumber(ARGV[6])
local arg = 7
for i = 1, tonumber(ARGV[6]) do
  local account = {
    name = ARGV[arg], turn = ARGV[arg + 1], queue = KEYS[1 + 3 * i],
    limits = KEYS[2 + 3 * i], budget = KEYS[3 + 3 * i], actions = {},
  }
  local action_count = tonumber(ARGV[arg + 2])
  for j = 1, action_count do
    account.actions[j] = {
      id = ARGV[arg + 2 + j], meta = KEYS[next_key], parked = KEYS[next_key + 1],
    }
    next_key = next_key + 2
  end
  arg = arg + 3 + action_count
  accounts[i] = account
end
local granted = 0
local wait = -1
local SLACK_MS = 100

local function hold_until(at)
  local ms = math.ceil(at - now)
  if wait < 0 or ms < wait then
    wait = ms
  end
end

local function retire_if_idle(account, queue)
  if call('ZCARD', queue) == 0 then
    call('ZREM', KEYS[1], account)
  end
end

-- The next batch of an action: batches parked by a pause go first, lowest number first.
local function next_batch(action, fields, parked_key)
  local parked = call('SMEMBERS', parked_key)
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
  call('XADD', KEYS[3], '*', 'action', action, 'batch', batch)
  if from_parked then
    call('SREM', parked_key, batch)
  else
    call('HINCRBY', meta, 'dispatched', 1)
  end
  if next_batch(action, call('HMGET', meta, 'batches', 'dispatched'), parked_key) == nil then
    call('ZREM', queue, action)
  end
  if call('ZCARD', queue) == 0 then
    call('ZREM', KEYS[1], account)
  else
    call('ZADD', KEYS[1], call('HINCRBY', KEYS[2], 'turn', 1), account)
  end
end

local function try_account(account)
  local queue = account.queue
  local rpm = tonumber(call('HGET', account.limits, 'recordsPerMinute') or default_rpm)
  local emission = 60000 / rpm
  local budget_key = account.budget
  local account_tat = tonumber(call('GET', budget_key) or '0')
  for _, given in ipairs(account.actions) do
    local action, meta, parked_key = given.id, given.meta, given.parked
    -- One that left the queue (paused, finished) since the caller read it is passed over.
    if call('ZSCORE', queue, action) ~= false then
      local f = call('HMGET', meta, 'batches', 'dispatched', 'batchSize', 'records',
        'paused', 'cancelled', 'paceEmitMs', 'paceBurst', 'paceTat')
      local turn = batch_turn(f[5], f[6])
      local batch, from_parked = nil, false
      if turn ~= 'hold' then
        batch, from_parked = next_batch(action, f, parked_key)
      end
      if batch == nil then
        call('ZREM', queue, action)
      elseif turn == 'settle' then
        -- Cancelled: its batch is settled unprocessed without reaching MongoDB, so it costs
        -- neither budget nor pace, but it still takes its turn and its room in the stream.
        hand_out(account.name, queue, action, meta, parked_key, batch, from_parked)
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
          retire_if_idle(account.name, queue)
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
            call('SET', budget_key, tostring(tat), 'PX', math.ceil(tat - now) + 60000)
            if pace_emit > 0 then
              call('HSET', meta, 'paceTat', tostring(gcra_charge(pace_tat, now, cost, pace_emit)))
            end
            hand_out(account.name, queue, action, meta, parked_key, batch, from_parked)
            return true
          end
        end
      end
    end
  end
  retire_if_idle(account.name, queue)
  return false
end

-- The given accounts still in `ready` at the turn they had when read (or were given by
-- this call), least recently served first, as ZRANGE orders them.
local function in_turn_order()
  local waiting = {}
  for _, account in ipairs(accounts) do
    local turn = call('ZSCORE', KEYS[1], account.name)
    if turn and account.turn and tonumber(turn) == tonumber(account.turn) then
      waiting[#waiting + 1] = account
    end
  end
  table.sort(waiting, function(a, b)
    local a_turn, b_turn = tonumber(a.turn), tonumber(b.turn)
    if a_turn ~= b_turn then
      return a_turn < b_turn
    end
    return a.name < b.name
  end)
  return waiting
end

local passes = 0
while (max_passes == 0 or passes < max_passes) and room > 0 and granted < max_grants do
  passes = passes + 1
  local progress = false
  for _, account in ipairs(in_turn_order()) do
    if room <= 0 or granted >= max_grants then
      break
    end
    if try_account(account) then
      account.served = true
      account.turn = call('ZSCORE', KEYS[1], account.name)
      granted = granted + 1
      room = room - 1
      progress = true
    end
  end
  if not progress then
    break
  end
end

local held = -1
if room > 0 and granted < max_grants then
  held = 0
  for _, account in ipairs(in_turn_order()) do
    if not account.served then
      held = held + 1
    end
  end
end
return {granted, wait, held}
