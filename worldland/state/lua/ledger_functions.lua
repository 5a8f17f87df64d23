-- Setting a provider's capacity totals, as two local functions, so that a registration can check
-- its ledger change together with its record (provider_register.lua) and write both in one script,
-- or neither. Put it before the script's body: script("ledger_functions", <body>).
--
-- KEYS and ARGV: not read here; the script's body passes the ledger's key (a KEYS entry) and its
-- ARGV, with the index the ledger arguments start at.
--
-- ledger_plan(cap, argv, i): ``cap`` is the capacity ledger hash's key; reads argv from ``i``:
--   argv[i]       the CPU core total
--   argv[i + 1]   the memory total (MiB)
--   then (model, total, mining) triples to the end (ledger.ledger_args); mining -1 means "keep what
--   mines now". Models in the ledger but not in argv get total 0 (dropped if nothing is in use).
-- It writes nothing and returns the plan; ``plan.errors`` lists each total set below what jobs
-- hold (empty when the plan may be applied).
--
-- ledger_apply(plan) writes the plan: growing a GPU total adds to available; shrinking takes from
-- available first, then from mining; a declared mining count takes idle GPUs only. Returns nothing.

local function ledger_plan(cap, argv, i)
  local plan = {cap = cap, cpu = tonumber(argv[i]), mem = tonumber(argv[i + 1]), h = {}, want = {},
    mine = {}, models = {}, errors = {}}
  local h = plan.h
  local flat = redis.call('HGETALL', cap)
  for j = 1, #flat, 2 do h[flat[j]] = tonumber(flat[j + 1]) or 0 end
  local seen = {}
  for j = i + 2, #argv, 3 do
    local m = argv[j]
    plan.want[m] = tonumber(argv[j + 1])
    plan.mine[m] = tonumber(argv[j + 2])
    if not seen[m] then seen[m] = true; table.insert(plan.models, m) end
  end
  for f, _ in pairs(h) do
    local m = string.match(f, '^gpu:(.+):total$')
    if m and not seen[m] then seen[m] = true; table.insert(plan.models, m) end
  end
  table.sort(plan.models)
  local function g(f) return h[f] or 0 end
  for _, m in ipairs(plan.models) do
    local new, used = plan.want[m] or 0, g('gpu:' .. m .. ':in_use')
    if new < used then
      table.insert(plan.errors, string.format(
        'cannot set the %s GPU total to %d: %d in use by jobs', m, new, used))
    end
  end
  if plan.cpu < g('cpu:in_use') then
    table.insert(plan.errors, string.format(
      'cannot set the CPU core total to %d: %d in use by jobs', plan.cpu, g('cpu:in_use')))
  end
  if plan.mem < g('mem:in_use') then
    table.insert(plan.errors, string.format(
      'cannot set the memory total to %d MiB: %d MiB in use by jobs', plan.mem, g('mem:in_use')))
  end
  return plan
end

local function ledger_apply(plan)
  local cap, h = plan.cap, plan.h
  local function g(f) return h[f] or 0 end
  for _, m in ipairs(plan.models) do
    local p = 'gpu:' .. m .. ':'
    local new = plan.want[m] or 0
    local t, a, u, mi = g(p .. 'total'), g(p .. 'available'), g(p .. 'in_use'), g(p .. 'mining')
    if new == 0 and u == 0 then
      redis.call('HDEL', cap, p .. 'total', p .. 'available', p .. 'in_use', p .. 'mining')
    else
      if new >= t then
        a = a + (new - t)
      else
        local shrink = t - new
        local take = math.min(a, shrink)
        a = a - take
        mi = mi - (shrink - take)
      end
      local declared = plan.mine[m] or -1
      if declared >= 0 then  -- mining takes idle GPUs only, never GPUs that jobs hold
        local idle = a + mi
        mi = math.min(declared, idle)
        a = idle - mi
      end
      redis.call('HSET', cap, p .. 'total', new, p .. 'available', a, p .. 'in_use', u, p .. 'mining', mi)
    end
  end
  redis.call('HSET', cap,
    'cpu:total', plan.cpu, 'cpu:available', plan.cpu - g('cpu:in_use'), 'cpu:in_use', g('cpu:in_use'),
    'mem:total', plan.mem, 'mem:available', plan.mem - g('mem:in_use'), 'mem:in_use', g('mem:in_use'))
end
