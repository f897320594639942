-- Closed-loop load for POST /v1/decide (used by bench/latency.py for throughput at saturation):
--   wrk -t2 -c32 -d10s -s bench/wrk/decide.lua http://127.0.0.1:PORT -- bodies.jsonl
-- Each line of bodies.jsonl is one request body; every thread cycles through all of them, starting at a
-- different place. At the end one line "WRK_JSON {...}" carries the figures (latencies in microseconds).
local requests = {}
local idx = 0

function init(args)
  local path = args[1] or error("usage: -- <bodies.jsonl>")
  local f = assert(io.open(path, "r"))
  local headers = { ["Content-Type"] = "application/json" }
  for line in f:lines() do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", "/v1/decide", headers, line)
    end
  end
  f:close()
  math.randomseed(os.time() + tonumber(tostring(requests):match("0x(%x+)") or "0", 16) % 100000)
  idx = math.random(#requests)
end

function request()
  idx = idx % #requests + 1
  return requests[idx]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p99_9_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
