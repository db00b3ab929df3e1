-- wrk script: POST GitLab Merge Request Hook deliveries to /webhook, rotating over a range of
-- MR iids (so the bot has distinct MRs to evaluate), and print one JSON summary line.
-- Arguments (after `--`): template_file first_iid iid_count token
-- The template is a real sample payload (tests/samples) with __IID__ where the iid goes.

local requests = {}
local count = 0
local index = 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local template = file:read("*a")
  file:close()
  local first = tonumber(args[2])
  count = tonumber(args[3])
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Gitlab-Event"] = "Merge Request Hook",
    ["X-Gitlab-Token"] = args[4],
  }
  for k = 0, count - 1 do
    local body = template:gsub("__IID__", tostring(first + k))
    requests[k + 1] = wrk.format("POST", "/webhook", headers, body)
  end
end

function request()
  index = index % count + 1
  return requests[index]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non2xx": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
