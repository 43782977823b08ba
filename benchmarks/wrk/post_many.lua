-- wrk script: POST, in turn, the bodies listed in WRK_BODIES ("file|header-length;file|..."), each
-- with Content-Type WRK_CONTENT_TYPE and, when its header length is not empty, the V2 binary
-- tensor extension's Inference-Header-Content-Length; print one line "WRKJSON {...}" as post.lua.
local bodies, lengths = {}, {}
for item in string.gmatch(os.getenv("WRK_BODIES"), "[^;]+") do
  local file, hdr = string.match(item, "([^|]*)|?(.*)")
  local f = assert(io.open(file, "rb"))
  bodies[#bodies + 1] = f:read("*a")
  lengths[#lengths + 1] = hdr
  f:close()
end
local ctype = os.getenv("WRK_CONTENT_TYPE") or "application/json"
counter = 0

setup = function(thread)
  thread:set("counter", math.random(0, #bodies - 1))
end

request = function()
  counter = counter + 1
  local i = (counter % #bodies) + 1
  local headers = {["Content-Type"] = ctype}
  if lengths[i] ~= "" then
    headers["Inference-Header-Content-Length"] = lengths[i]
  end
  return wrk.format("POST", nil, headers, bodies[i])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.2f,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
