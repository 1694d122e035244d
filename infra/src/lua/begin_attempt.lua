-- Counts an attempt at a batch, unless its action was paused or cancelled before any
-- attempt touched it: the worker read the action's turn a moment before, and a pause or
-- cancel acknowledged meanwhile must hold. Once an attempt has begun, every later one
-- counts whatever the action's turn: only applying the batch can tell what it wrote.
--
-- KEYS: meta
-- ARGV: batch
-- Returns {turn, attempt}: {'apply', its number}, or {'hold' | 'settle', 0} uncounted.
local field = 'attempts:' .. ARGV[1]
local f = call('HMGET', KEYS[1], 'paused', 'cancelled', field)
local turn = batch_turn(f[1], f[2])
if turn ~= 'apply' and not f[3] then
  return {turn, 0}
end
return {'apply', call('HINCRBY', KEYS[1], field, 1)}
