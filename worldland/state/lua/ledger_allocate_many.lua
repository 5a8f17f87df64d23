-- CapacityLedger.allocate_many: one call allocates a batch; each job is all or nothing, in order (a
-- job id twice: the second finds the first). Only a provider in the required status takes jobs;
-- available GPUs are taken first, then mining ones (mining yields to rental).
--
-- KEYS: none. Keys are <template><id> from the templates ``Keys`` gives for an empty id (a single
-- Redis primary carries the fleet: no cluster slots to respect).
-- ARGV[1]   capacity ledger key template (Keys.capacity(''))
-- ARGV[2]   provider key template (Keys.provider(''))
-- ARGV[3]   job key template (Keys.job(''))
-- ARGV[4]   job-set key template (Keys.provider_jobs(''))
-- ARGV[5]   the status a provider must be in to take jobs ('available')
-- ARGV[6..] per job, six values: job_id, provider_id, model ('' for none), gpus, cpu cores,
--           memory MiB
--
-- Returns, flattened, per job its reply's length and the reply: {'ok', from_mining} |
-- {'existing', provider, model, gpus, from_mining, cpu, memory} (the job already holds this) |
-- {'err', message} (refused; nothing written for that job).

local function allocate(cap, prov, job, pjobs, job_id, pid, model, gpus, cpu, mem, required)
  if redis.call('EXISTS', job) == 1 then
    local j = redis.call('HMGET', job, 'provider', 'model', 'gpus', 'from_mining', 'cpu', 'memory_mb')
    return {'existing', j[1] or '', j[2] or '', j[3] or '0', j[4] or '0', j[5] or '0', j[6] or '0'}
  end

  local status = redis.call('HGET', prov, 'status')
  if not status then
    return {'err', 'provider ' .. pid .. ' is not registered; jobs go only to available providers'}
  end
  if status ~= required then
    return {'err', 'provider ' .. pid .. ' is ' .. status .. ', not ' .. required ..
      '; jobs go only to available providers'}
  end

  local p = 'gpu:' .. model .. ':'
  local v = redis.call('HMGET', cap, p .. 'available', p .. 'mining', p .. 'in_use',
    'cpu:available', 'cpu:in_use', 'mem:available', 'mem:in_use')
  local a, mi, u = 0, 0, 0
  if gpus > 0 then a, mi, u = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0 end
  local cpu_a, cpu_u = tonumber(v[4]) or 0, tonumber(v[5]) or 0
  local mem_a, mem_u = tonumber(v[6]) or 0, tonumber(v[7]) or 0

  local short = {}
  if gpus > a + mi then
    table.insert(short, string.format(
      'has %d %s GPU free for rental (%d available + %d mining), job needs %d', a + mi, model, a, mi, gpus))
  end
  if cpu > cpu_a then
    table.insert(short, string.format('has %d CPU cores available, job needs %d', cpu_a, cpu))
  end
  if mem > mem_a then
    table.insert(short, string.format('has %d MiB memory available, job needs %d MiB', mem_a, mem))
  end
  if #short > 0 then
    return {'err', 'provider ' .. pid .. ' ' .. table.concat(short, '; ')}
  end

  local from_available = math.min(a, gpus)
  local from_mining = gpus - from_available
  local writes = {'cpu:available', cpu_a - cpu, 'cpu:in_use', cpu_u + cpu,
    'mem:available', mem_a - mem, 'mem:in_use', mem_u + mem}
  if gpus > 0 then
    for _, x in ipairs({p .. 'available', a - from_available, p .. 'mining', mi - from_mining,
      p .. 'in_use', u + gpus}) do table.insert(writes, x) end
  end
  redis.call('HSET', cap, unpack(writes))
  redis.call('HSET', job, 'provider', pid, 'model', model, 'gpus', gpus, 'from_mining', from_mining,
    'cpu', cpu, 'memory_mb', mem)
  redis.call('SADD', pjobs, job_id)
  return {'ok', tostring(from_mining)}
end

local out = {}
for i = 6, #ARGV, 6 do
  local job_id, pid = ARGV[i], ARGV[i + 1]
  local reply = allocate(ARGV[1] .. pid, ARGV[2] .. pid, ARGV[3] .. job_id, ARGV[4] .. pid, job_id, pid,
    ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), ARGV[5])
  out[#out + 1] = #reply
  for _, x in ipairs(reply) do out[#out + 1] = x end
end
return out
