-- ProviderStore.upsert_registration: create the provider (Pending) or update its registration, and
-- set its capacity ledger. Every check first (wallet, node name, capacity ledger), then the record
-- and the ledger written together, so a refused registration writes nothing. The status is never
-- changed here. Composed as script("ledger_functions", "provider_register").
--
-- KEYS[1]   the provider's hash (Keys.provider(id))
-- KEYS[2]   the node-name claim of the candidate node name (Keys.node_claim(name))
-- KEYS[3]   the Pending status index set
-- KEYS[4]   the provider's capacity ledger hash (Keys.capacity(id))
-- ARGV[1]   provider id
-- ARGV[2]   wallet address (compared without case: a provider id keeps its first wallet)
-- ARGV[3]   candidate node name (claimed only when the provider is new)
-- ARGV[4]   now (epoch seconds)
-- ARGV[5]   n, then n field/value pairs describing the registration (ARGV[6 .. 5 + 2n])
-- ARGV[6 + 2n ..]   the ledger arguments (ledger.ledger_args; see ledger_functions.lua)
--
-- Returns {outcome, status, detail}: {'created', 'pending', node name} | {'updated', status, ''} |
-- {'wallet_mismatch', status, ''} | {'node_taken', '', ''} (try another node name) |
-- {'capacity', status or '', message} (the ledger refused: totals below what jobs hold).

local n = tonumber(ARGV[5])
local last_field = 5 + 2 * n
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  if string.lower(redis.call('HGET', KEYS[1], 'wallet_addr')) ~= string.lower(ARGV[2]) then
    return {'wallet_mismatch', status, ''}
  end
else
  local owner = redis.call('GET', KEYS[2])
  if owner and owner ~= ARGV[1] then return {'node_taken', '', ''} end
end
local plan = ledger_plan(KEYS[4], ARGV, last_field + 1)
if #plan.errors > 0 then
  return {'capacity', status or '', 'provider ' .. ARGV[1] .. ': ' .. table.concat(plan.errors, '; ')}
end
if not status then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'provider_id', ARGV[1], 'wallet_addr', ARGV[2], 'node_name', ARGV[3],
    'status', 'pending', 'created_at', ARGV[4], 'status_changed_at', ARGV[4])
  redis.call('SADD', KEYS[3], ARGV[1])
end
for i = 6, last_field, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
ledger_apply(plan)
if status then return {'updated', status, ''} end
return {'created', 'pending', ARGV[3]}
