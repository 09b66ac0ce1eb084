//! Lua scripts, loaded once by SHA and re-sent on `NOSCRIPT` (after a failover or
//! `SCRIPT FLUSH`) by fred's `evalsha_with_reload`.

/// `KEYS[1]`; `ARGV[1]` = 1 when a value is expected, `ARGV[2]` = expected value,
/// `ARGV[3]` = 1 to write (0 to delete), `ARGV[4]` = new value, `ARGV[5]` = TTL in ms or "".
/// Returns 1 when it swapped.
pub(crate) const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[3] == '1' then
  if ARGV[5] ~= '' then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// `KEYS[1]`: the value and its `PTTL` in one atomic step (`{false, -2}` when missing).
pub(crate) const GET_WITH_TTL: &str = r"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
";
