-- CapacityLedger.set_totals: set or replace what a provider offers, all or nothing.
-- Composed as script("ledger_functions", "ledger_set_totals").
--
-- KEYS[1]    the provider's capacity ledger hash (Keys.capacity(id))
-- ARGV[1]    provider id (for the message)
-- ARGV[2..]  the ledger arguments (ledger.ledger_args; see ledger_functions.lua)
--
-- Returns {'ok'} | {'err', message} (a total below what jobs hold; nothing written).

local plan = ledger_plan(KEYS[1], ARGV, 2)
if #plan.errors > 0 then
  return {'err', 'provider ' .. ARGV[1] .. ': ' .. table.concat(plan.errors, '; ')}
end
ledger_apply(plan)
return {'ok'}
