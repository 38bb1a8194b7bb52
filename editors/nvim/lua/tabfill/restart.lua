-- Pure logic: when to restart a server that stopped on its own, and when to say so (the VS Code extension's
-- editors/vscode/src/restart.ts follows the same rules).
--
-- An outage starts with a crash of a server that had been up for `stable_ms` (or the first crash) and lasts
-- until a restarted server stays up that long. Within an outage the server is restarted at most `max_tries`
-- times, after delays that double from `first_delay_ms` (capped at `max_delay_ms`): 0.5, 1, 2, 4 and 8 s by
-- default, so five tries (each also loading the model) take about a minute before it gives up. The user is
-- told once when an outage starts, and once more only if it ends in giving up.
local M = {}

M.defaults = { max_tries = 5, first_delay_ms = 500, max_delay_ms = 8000, stable_ms = 60000 }

local Restarts = {}
Restarts.__index = Restarts

---@param policy table|nil fields of M.defaults
function M.new(policy)
  return setmetatable({
    policy = vim.tbl_extend("force", M.defaults, policy or {}),
    attempts = 0,
    up_since = nil,
    gave_up = false,
  }, Restarts)
end

--- The server (re)started and answered initialize at `now` (ms).
function Restarts:running(now)
  self.up_since = now
end

--- The server stopped without being asked to (or a restart failed) at `now`: what to do.
---@return {action: "restart"|"give_up", attempt: integer, delay_ms: integer?, announce: boolean}
function Restarts:crashed(now)
  local policy = self.policy
  if self.up_since and now - self.up_since >= policy.stable_ms then
    self:reset() -- it had been up long enough: a new outage
  end
  self.up_since = nil
  if self.attempts >= policy.max_tries then
    local announce = not self.gave_up
    self.gave_up = true
    return { action = "give_up", attempt = self.attempts, announce = announce }
  end
  self.attempts = self.attempts + 1
  local delay = math.min(policy.max_delay_ms, policy.first_delay_ms * 2 ^ (self.attempts - 1))
  return { action = "restart", attempt = self.attempts, delay_ms = math.floor(delay), announce = self.attempts == 1 }
end

--- The user restarted the server: forget the outage.
function Restarts:reset()
  self.attempts = 0
  self.gave_up = false
end

return M
