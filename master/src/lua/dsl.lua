-- The task DSL of the original project, on top of goroutine (master only):
--   task(name):description(s):command(fn):delegate_to(host | {hosts} | group)
--             :timeout(s):retries(n):depends_on({...}):build()
--   workflow.define(name):tasks({...})   then   workflow.run(name) / wf:run()
-- A `command` function ships exactly like an `async` body and receives one
-- argument: a table of the results of the tasks it depends on, keyed by task name
-- (for a task on several hosts: keyed by host). A task delegated to several hosts
-- runs on them in parallel; independent tasks of a workflow run in parallel.

local goroutine, fleet = goroutine, fleet
local Task = {}
Task.__index = Task

local function check(cond, msg)
  if not cond then error(msg, 3) end
end

function task(name)
  check(type(name) == "string" and name ~= "", "task(name): name must be a non-empty string")
  return setmetatable({ _name = name, _deps = {}, _retries = 0 }, Task)
end

function Task:description(s) self._description = s; return self end
function Task:command(fn)
  check(type(fn) == "function", "task " .. self._name .. ": command must be a function")
  self._command = fn
  return self
end
function Task:delegate_to(target) self._target = target; return self end
function Task:timeout(t) self._timeout = t; return self end
function Task:retries(n) self._retries = n; return self end
function Task:depends_on(list)
  check(type(list) == "table", "task " .. self._name .. ": depends_on takes a list of task names")
  self._deps = list
  return self
end
function Task:build()
  check(self._command, "task " .. self._name .. ": no command given")
  self._built = true
  return self
end

-- The hosts a task runs on: nil (locally), or a list of agent names.
local function hosts_of(t)
  local target = t._target
  if target == nil then return nil end
  if type(target) == "string" then return fleet.hosts(target) end
  local out, seen = {}, {}
  for _, pattern in ipairs(target) do
    for _, h in ipairs(fleet.hosts(pattern)) do
      if not seen[h] then seen[h] = true; out[#out + 1] = h end
    end
  end
  return out
end

-- Start `t` with `inputs`; returns a list of {host=, handle=}.
local function start(t, inputs)
  local cmd = t._command
  local body = function() return cmd(inputs) end
  local opts = { name = t._name, timeout = t._timeout, retries = t._retries }
  local hosts = hosts_of(t)
  local started = {}
  if hosts == nil then
    started[1] = { host = "local", handle = goroutine.async(body, opts) }
  else
    for _, h in ipairs(hosts) do
      local o = { name = opts.name, timeout = opts.timeout, retries = opts.retries, delegate_to = h }
      started[#started + 1] = { host = h, handle = goroutine.async(body, o) }
    end
  end
  return started
end

-- Collect one task's outcome: ok, value (single host) or {host = value}, err.
local function finish(t, started)
  local results = goroutine.await_all((function()
    local hs = {}
    for i, s in ipairs(started) do hs[i] = s.handle end
    return hs
  end)())
  local errors = {}
  local values = {}
  for i, r in ipairs(results) do
    if r.success then
      values[started[i].host] = r.values[1]
    else
      errors[#errors + 1] = r.error
    end
  end
  local value = values
  if #started == 1 and t._target == nil then value = values["local"] end
  return #errors == 0, value, table.concat(errors, "; ")
end

-- Run a list of tasks as a DAG. Returns ok, {name = {success, value, error, skipped}}.
local function run_dag(name, tasks)
  local by_name = {}
  for _, t in ipairs(tasks) do
    check(getmetatable(t) == Task, "workflow " .. name .. ": tasks must be built with task(...)")
    check(not by_name[t._name], "workflow " .. name .. ": duplicate task " .. t._name)
    by_name[t._name] = t
  end
  for _, t in ipairs(tasks) do
    for _, d in ipairs(t._deps) do
      check(by_name[d], "workflow " .. name .. ": task " .. t._name .. " depends on unknown task " .. d)
    end
  end
  local state, results, running = {}, {}, {}
  local remaining = #tasks
  local all_ok = true
  while remaining > 0 do
    -- Start every task whose dependencies are done (skip those whose deps failed).
    local progressed = false
    for _, t in ipairs(tasks) do
      if state[t._name] == nil then
        local ready, failed_dep = true, nil
        for _, d in ipairs(t._deps) do
          if state[d] ~= "ok" then
            ready = false
            if state[d] == "failed" or state[d] == "skipped" then failed_dep = d end
          end
        end
        if failed_dep then
          state[t._name] = "skipped"
          results[t._name] = { success = false, skipped = true, error = "skipped: dependency " .. failed_dep .. " failed" }
          remaining = remaining - 1
          progressed = true
        elseif ready then
          local inputs = {}
          for _, d in ipairs(t._deps) do inputs[d] = results[d].value end
          state[t._name] = "running"
          running[#running + 1] = { task = t, started = start(t, inputs) }
          progressed = true
        end
      end
    end
    if #running == 0 then
      check(progressed or remaining == 0, "workflow " .. name .. ": dependency cycle")
    else
      -- Finish every running task whose handles are all done; otherwise wait for
      -- one of the handles still running (never for one already finished).
      local finished_any = false
      for i = #running, 1, -1 do
        local r = running[i]
        local all_done = true
        for _, s in ipairs(r.started) do
          if s.handle:status() == "running" then all_done = false; break end
        end
        if all_done then
          local ok, value, err = finish(r.task, r.started)
          state[r.task._name] = ok and "ok" or "failed"
          results[r.task._name] = { success = ok, value = value, error = ok and nil or err }
          if not ok then all_ok = false end
          table.remove(running, i)
          remaining = remaining - 1
          finished_any = true
        end
      end
      if not finished_any then
        local handles = {}
        for _, r in ipairs(running) do
          for _, s in ipairs(r.started) do
            if s.handle:status() == "running" then handles[#handles + 1] = s.handle end
          end
        end
        if #handles > 0 then goroutine.await_any(handles) end
      end
    end
  end
  for _, r in pairs(results) do if not r.success then all_ok = false end end
  return all_ok, results
end

local Workflow = {}
Workflow.__index = Workflow
local workflows = {}

workflow = {}
function workflow.define(name)
  check(type(name) == "string", "workflow.define(name): name must be a string")
  local wf = setmetatable({ _name = name, _tasks = {} }, Workflow)
  workflows[name] = wf
  return wf
end
function Workflow:tasks(list) self._tasks = list; return self end
function Workflow:run() return run_dag(self._name, self._tasks) end
function workflow.run(name)
  local wf = workflows[name]
  check(wf, "workflow.run: no workflow named " .. tostring(name))
  return wf:run()
end
-- A single built task can run on its own too.
function Task:run(inputs)
  local ok, value, err = finish(self, start(self, inputs or {}))
  if ok then return true, value end
  return false, err
end
