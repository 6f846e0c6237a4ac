-- GET the bare endpoint; same counting and report as the other scripts.
-- Usage: wrk -s bench/wrk/bare.lua http://HOST:PORT/bare
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

function init(args)
  static_request(wrk.format("GET"))
end
