-- buy.lua: wrk script for Yoink's POST /buy.
--
-- Every request buys 1 unit of SALE_ID for a user id never used before in this run
-- (thread number + a per-run random tag + a thread-local counter), so with a sale
-- that has enough stock and any per-user limit every request does fresh work:
-- 202 reserved, never a 409 replay or a 429 limit.
--
--   SALE_ID=bench wrk -t1 -c1000 -d20s --latency -s loadtest/buy.lua http://127.0.0.1:8080
--
-- Environment:
--   SALE_ID       sale to buy from (default "bench")
--   QUANTITY      units per request (default 1)
--   COUNT_STATUS  "1": count responses per HTTP status and print them at the end.
--                 Off by default: a Lua callback per response costs wrk CPU, which on
--                 a small box is taken from the server under test.
--
-- At the end it prints one machine-readable line (reserve-ceiling.sh parses it):
--   YOINK_WRK requests=N duration_s=S rps=R p50_ms=A p90_ms=B p99_ms=C max_ms=D non_2xx=E
--             socket_errors=F timeouts=G

local sale_id = os.getenv("SALE_ID") or "bench"
local quantity = tonumber(os.getenv("QUANTITY") or "1")
local count_status = os.getenv("COUNT_STATUS") == "1"

-- setup() runs in the main Lua state, once per thread, before the threads start.
local threads = {}
local next_thread = 0

function setup(thread)
  next_thread = next_thread + 1
  thread:set("thread_no", next_thread)
  table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local prefix
local counter = 0
local headers = { ["Content-Type"] = "application/json" }
statuses = {}

function init(args)
  -- A random tag per thread and run, so two runs against one sale never reuse ids.
  math.randomseed(os.time() + (thread_no or 0) * 7919 + math.floor(os.clock() * 1e6))
  prefix = string.format("w%d-%06x%06x-", thread_no or 0,
    math.random(0, 0xffffff), math.random(0, 0xffffff))
end

function request()
  counter = counter + 1
  local body = string.format('{"sale_id":"%s","user_id":"%s%d","quantity":%d}',
    sale_id, prefix, counter, quantity)
  return wrk.format("POST", "/buy", headers, body)
end

if count_status then
  function response(status, hdrs, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  if count_status then
    local total = {}
    for _, t in ipairs(threads) do
      local s = t:get("statuses") or {}
      for code, n in pairs(s) do
        total[code] = (total[code] or 0) + n
      end
    end
    local parts = {}
    for code, n in pairs(total) do
      table.insert(parts, string.format("%s=%d", tostring(code), n))
    end
    table.sort(parts)
    io.write("YOINK_WRK_STATUS " .. table.concat(parts, " ") .. "\n")
  end
  io.write(string.format(
    "YOINK_WRK requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f non_2xx=%d socket_errors=%d timeouts=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write, e.timeout))
end
