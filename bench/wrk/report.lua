-- Shared by the bench scripts (loaded with dofile): counts what each thread sent and what
-- came back, and prints one JSON line that bench/api.py parses instead of wrk's text.
--
-- A "good" answer is HTTP 2xx whose envelope says "code":200 (bananastand answers every
-- envelope, errors included, with HTTP 200, so the status alone proves nothing).

sent = 0 -- requests handed to wrk by request() in this thread
good = 0 -- answers that were 2xx with "code":200 in the body
bad = 0 -- any other answer
first_bad = ""

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

-- Make request() hand out one prebuilt request, counting it.
function static_request(prebuilt)
  request = function()
    sent = sent + 1
    return prebuilt
  end
end

function response(status, headers, body)
  if status >= 200 and status < 300 and body and string.find(body, '"code":200', 1, true) then
    good = good + 1
  else
    bad = bad + 1
    if first_bad == "" then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local total_sent, total_good, total_bad, example = 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    total_good = total_good + thread:get("good")
    total_bad = total_bad + thread:get("bad")
    if example == "" then
      example = thread:get("first_bad")
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"sent":%d,"good":%d,"bad":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    total_sent, total_good, total_bad
  ))
  if example ~= "" then
    -- Raw text on its own line: the body may hold anything.
    io.write("BENCH_FIRST_BAD " .. string.gsub(example, "\n", " ") .. "\n")
  end
end
