-- ProviderStore.transition: move one provider to a target status if the lifecycle allows it,
-- optionally as a compare-and-set. Composed as script("transition_functions", "provider_transition").
--
-- KEYS[1]       the provider's hash (Keys.provider(id))
-- KEYS[2..]     ProviderStore.transition_keys() (see transition_functions.lua)
-- ARGV[1]       provider id
-- ARGV[2]       target status
-- ARGV[3]       now (epoch seconds)
-- ARGV[4]       status reason
-- ARGV[5]       the status expected now, '' for any
--
-- Returns {outcome, current, previous}: 'unknown' (no such provider) | 'conflict' (not in the
-- expected status) | transition()'s 'ok' | 'noop' | 'illegal' | 'illegal_recovery'.

local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'unknown', '', ''} end
if ARGV[5] ~= '' and ARGV[5] ~= current then return {'conflict', current, ''} end
return transition(KEYS[1], ARGV[1], 2, current, ARGV[2], ARGV[3], ARGV[4])
