--[[
fill_stream.lua (bench only: benches/one_million.rs): append reserved entries FROM..TO of
a generated sale to its stream, shaped exactly as reserve.lua writes them, with explicit
ids BASE_MS-SEQ so PostgreSQL's generated rows carry the same stream ids. Writes nothing
else: the bench sets the sale's counters and the group itself, once.

KEYS[1]  events  stream  the sale's event stream

ARGV[1]  sale_no         the generated sale's number (first 8 hex digits of its ids)
ARGV[2]  sale_id
ARGV[3]  from            first seq to append (>= 1)
ARGV[4]  to              last seq to append
ARGV[5]  base_ms         the entries' reserved_at_ms and the ms part of their ids

Returns  the number of entries appended

Example:
  EVAL <script> 1 {sale:big}:events 1 big 1 20000 1795000000000
]]

local sale_no, sale_id = tonumber(ARGV[1]), ARGV[2]
local from, to, base_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
for n = from, to do
  redis.call('XADD', KEYS[1], base_ms .. '-' .. n,
    'type', 'reserved',
    'reservation_id', string.format('%08x-0000-7000-8000-%012x', sale_no, n),
    'sale_id', sale_id, 'user_id', 'u' .. n, 'quantity', 1, 'reserved_at_ms', base_ms,
    'epoch', 1, 'seq', n)
end
return to - from + 1
