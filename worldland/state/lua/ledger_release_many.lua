-- CapacityLedger.release_many: one call releases a batch; the owner of each job is read here, so
-- callers need not know it. Releasing an unknown or already released job changes nothing.
--
-- KEYS: none. Keys are <template><id> from the templates ``Keys`` gives for an empty id.
-- ARGV[1]   job key template (Keys.job(''))
-- ARGV[2]   capacity ledger key template (Keys.capacity(''))
-- ARGV[3]   job-set key template (Keys.provider_jobs(''))
-- ARGV[4..] job ids
--
-- Returns, flattened, per job its reply's length and the reply: {'none'} (it held nothing) |
-- {'released', provider, model, gpus, from_mining, cpu, memory}.

local function release(job, cap, pjobs, job_id)
  local j = redis.call('HMGET', job, 'provider', 'model', 'gpus', 'from_mining', 'cpu', 'memory_mb')
  if not j[1] then return {'none'} end

  -- Each pool gets back what the job holds (never more than is in use, should totals have moved).
  local model = j[2] or ''
  local pools = {{'cpu:in_use', 'cpu:available', tonumber(j[5]) or 0},
    {'mem:in_use', 'mem:available', tonumber(j[6]) or 0}}
  if model ~= '' then
    table.insert(pools, {'gpu:' .. model .. ':in_use', 'gpu:' .. model .. ':available', tonumber(j[3]) or 0})
  end
  local names = {}
  for _, pool in ipairs(pools) do table.insert(names, pool[1]); table.insert(names, pool[2]) end
  local v = redis.call('HMGET', cap, unpack(names))
  local writes = {}
  for i, pool in ipairs(pools) do
    local used = tonumber(v[2 * i - 1])
    if used and pool[3] > 0 then
      local back = math.min(used, pool[3])
      for _, x in ipairs({pool[1], used - back, pool[2], (tonumber(v[2 * i]) or 0) + back}) do
        table.insert(writes, x)
      end
    end
  end
  if #writes > 0 then redis.call('HSET', cap, unpack(writes)) end
  redis.call('DEL', job)
  redis.call('SREM', pjobs, job_id)
  return {'released', j[1], model, j[3] or '0', j[4] or '0', j[5] or '0', j[6] or '0'}
end

local out = {}
for i = 4, #ARGV do
  local job = ARGV[1] .. ARGV[i]
  local owner = redis.call('HGET', job, 'provider')
  local reply = {'none'}
  if owner then reply = release(job, ARGV[2] .. owner, ARGV[3] .. owner, ARGV[i]) end
  out[#out + 1] = #reply
  for _, x in ipairs(reply) do out[#out + 1] = x end
end
return out
