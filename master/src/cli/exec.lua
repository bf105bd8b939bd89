-- The script `sloth-master exec` runs: one streaming task per host, then a summary.
local hosts = fleet.hosts(vars.pattern)
local handles = {}
for _, h in ipairs(hosts) do
  handles[#handles + 1] = goroutine.async(function()
    local r, err = exec.run(vars.command, { stream = true })
    if not r then error(err, 0) end
    if not r.success then
      error(string.format("exit code %s", tostring(r.code or ("killed (" .. tostring(r.signal or "timeout") .. ")"))), 0)
    end
    return r.code
  end, { delegate_to = h, name = "exec", timeout = vars.timeout ~= "" and vars.timeout or nil })
end
local failed = 0
for _, r in ipairs(goroutine.await_all(handles)) do
  if r.success then
    print(string.format("%-12s exit 0", r.host))
  else
    failed = failed + 1
    print(string.format("%-12s FAILED  %s", r.host, r.error))
  end
end
print(string.format("%d host(s), %d failed", #handles, failed))
