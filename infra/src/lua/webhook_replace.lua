-- Replaces one field of a hash (an endpoint after a secret rotation) if it still holds what
-- the caller read, so that two rotations, or a rotation and a disabling, never overwrite
-- each other unseen.
--
-- KEYS: hash
-- ARGV: field, expected, replacement
-- Returns 1 replaced, 0 it changed meanwhile (read again), -1 it is gone.
local current = call('HGET', KEYS[1], ARGV[1])
if not current then
  return -1
end
if current ~= ARGV[2] then
  return 0
end
call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
