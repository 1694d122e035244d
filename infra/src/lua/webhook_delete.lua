-- Deletes a webhook endpoint and its deliveries. Attempts still scheduled for it stay in the
-- partition's due set until a deliverer reaches them, finds the endpoint gone and drops
-- them (the due set is the partition's, and this script reaches only the account's keys).
--
-- KEYS: webhooks (the account's endpoints), deliveries, log, pending
-- ARGV: endpointId
-- Returns 1 deleted, 0 no such endpoint.
if call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 1
