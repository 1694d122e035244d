-- Reads a page of an action's events, one entry at a time, so that a page stays small
-- whatever the events hold: a settled batch's event can carry megabytes of kept records,
-- and sixteen of them in one reply would be a few hundred megabytes in the reader.
--
-- Stops after ARGV[2] events, or before the event that would take the page past ARGV[3]
-- bytes (field names and values); the first event is always read, so a page is never
-- empty before the end. Only an empty page means the end of the stream.
--
-- KEYS: events
-- ARGV: exclusive start ('-'/'+' for the first/last entry, '(<id>' after/before one),
--       most events, most bytes, direction ('forward'/'backward')
local cursor = ARGV[1]
local most_events = tonumber(ARGV[2])
local most_bytes = tonumber(ARGV[3])
local backward = ARGV[4] == 'backward'
local page = {}
local used = 0
for _ = 1, most_events do
  local found
  if backward then
    found = call('XREVRANGE', KEYS[1], cursor, '-', 'COUNT', 1)
  else
    found = call('XRANGE', KEYS[1], cursor, '+', 'COUNT', 1)
  end
  local entry = found[1]
  if entry == nil then
    break
  end
  local size = 0
  for _, text in ipairs(entry[2]) do
    size = size + #text
  end
  if #page > 0 and used + size > most_bytes then
    break
  end
  page[#page + 1] = entry
  used = used + size
  cursor = '(' .. entry[1]
end
return page
