-- ProviderStore._set_fields: HSET fields on a provider's record only if the record exists, so a
-- write never resurrects a half record of a deleted provider.
--
-- KEYS[1]   the provider's hash (Keys.provider(id))
-- ARGV      field, value, field, value, ...
--
-- Returns 1 when written, 0 when there is no such provider (nothing written).

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
