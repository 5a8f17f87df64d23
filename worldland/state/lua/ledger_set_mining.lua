-- CapacityLedger.set_mining: set how many GPUs of one model mine. Raising it takes idle (available)
-- GPUs only, never GPUs in use by jobs; lowering it returns mining GPUs to available.
--
-- KEYS[1]   the provider's capacity ledger hash (Keys.capacity(id))
-- ARGV[1]   provider id (for the message)
-- ARGV[2]   canonical GPU model
-- ARGV[3]   the mining count wanted
--
-- Returns {'ok'} | {'err', message} (the model is not offered, or too few idle GPUs; nothing written).

local cap, pid, m, count = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local p = 'gpu:' .. m .. ':'
local t = tonumber(redis.call('HGET', cap, p .. 'total'))
if not t then
  if count == 0 then return {'ok'} end
  return {'err', string.format('provider %s offers no %s GPUs, cannot mine %d', pid, m, count)}
end
local a = tonumber(redis.call('HGET', cap, p .. 'available')) or 0
local mi = tonumber(redis.call('HGET', cap, p .. 'mining')) or 0
local u = tonumber(redis.call('HGET', cap, p .. 'in_use')) or 0
if count > mi then
  local need = count - mi
  if need > a then
    return {'err', string.format(
      'provider %s has %d idle %s GPU (%d total: %d in use, %d mining), cannot raise mining from %d to %d',
      pid, a, m, t, u, mi, mi, count)}
  end
  a = a - need
else
  a = a + (mi - count)
end
redis.call('HSET', cap, p .. 'available', a, p .. 'mining', count)
return {'ok'}
