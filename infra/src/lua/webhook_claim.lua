-- Takes the partition's next due delivery attempt for `leaseMs`: its score moves to the end
-- of the lease, so no other deliverer takes it meanwhile, and one that died holding it
-- leaves it due again when the lease ends. The lease's end is the token the settlement
-- must show: a deliverer whose lease ran out (and was taken over) records nothing.
--
-- An account holds at most `maxInFlight` leases of the partition at once (its endpoints
-- that hang cannot take every sender): the live leases are `leases` (member -> lease end),
-- counted by account here, so a lease that ends without a settlement (its deliverer died)
-- stops counting when it ends, with no counter to go stale. Of the first `scan` due
-- attempts the first whose account is under its bound is taken; those passed over, their
-- account being at its bound, are put back by `deferMs`, so that a long backlog of one
-- account cannot keep the others' attempts out of the scanned window.
--
-- KEYS: due (the partition's), leases (the partition's)
-- ARGV: leaseMs, maxInFlight, scan, deferMs
-- Returns {member, leaseEnd} or nil when nothing is due (or all of it is held back).
local now = math.floor(clock_ms())
local max_in_flight = tonumber(ARGV[2])
local function account_of(member)
  return string.match(member, '^[^ ]*')
end
-- Leases that ended (their deliverer died or overran): their attempts are due again by
-- their score in `due`.
for _, member in ipairs(call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  call('ZREM', KEYS[2], member)
end
local held = {}
for _, member in ipairs(call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
  local account = account_of(member)
  held[account] = (held[account] or 0) + 1
end
local due = call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  local account = account_of(member)
  if (held[account] or 0) < max_in_flight then
    local lease_end = now + tonumber(ARGV[1])
    call('ZADD', KEYS[1], lease_end, member)
    call('ZADD', KEYS[2], lease_end, member)
    return {member, lease_end}
  end
  call('ZADD', KEYS[1], now + tonumber(ARGV[4]), member)
end
return false
