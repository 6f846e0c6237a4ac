-- GET recordInfo, cycling through task ids read from a file (one id a line); each thread
-- starts at a different place in the list.
-- Usage: wrk -s bench/wrk/record_info.lua http://HOST:PORT/api/v1/jobs/recordInfo -- KEY IDS_FILE
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local prebuilt = {}
local index = 0

function init(args)
  local key = assert(args[1], "pass the API key after --")
  local ids_file = assert(args[2], "pass the file of task ids after the key")
  local headers = { ["Authorization"] = "Bearer " .. key }
  for id in io.lines(ids_file) do
    if id ~= "" then
      table.insert(prebuilt, wrk.format("GET", wrk.path .. "?taskId=" .. id, headers))
    end
  end
  assert(#prebuilt > 0, "no task ids in " .. ids_file)
  index = ((thread_index or 1) - 1) * 7919 % #prebuilt
end

function request()
  sent = sent + 1
  index = index % #prebuilt + 1
  return prebuilt[index]
end
