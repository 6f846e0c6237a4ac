-- POST createTask with a test key; every request is the same valid body.
-- Usage: wrk -s bench/wrk/create_task.lua http://HOST:PORT/api/v1/jobs/createTask -- KEY [BODY]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local default_body = '{"model":"nano-banana-pro","input":{"prompt":"a banana in sunglasses"}}'

function init(args)
  local key = assert(args[1], "pass the API key after --")
  local headers = {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json",
  }
  static_request(wrk.format("POST", nil, headers, args[2] or default_body))
end
