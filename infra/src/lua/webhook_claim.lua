-- Takes the partition's next due delivery attempt for `leaseMs`: its score moves to the end
-- of the lease, so no other deliverer takes it meanwhile, and one that died holding it
-- leaves it due again when the lease ends. The lease's end is the token the settlement
-- must show: a deliverer whose lease ran out (and was taken over) records nothing.
--
-- KEYS: due (the partition's)
-- ARGV: leaseMs
-- Returns {member, leaseEnd} or nil when nothing is due.
local now = math.floor(clock_ms())
local due = call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
if #due == 0 then
  return false
end
local lease_end = now + tonumber(ARGV[1])
call('ZADD', KEYS[1], lease_end, due[1])
return {due[1], lease_end}
