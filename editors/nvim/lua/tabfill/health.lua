-- :checkhealth tabfill — the server command, the model it loaded and the last latency.
local M = {}

local health = vim.health
local start = health.start or health.report_start
local ok = health.ok or health.report_ok
local warn = health.warn or health.report_warn
local error = health.error or health.report_error
local info = health.info or health.report_info

function M.check()
  start("tabfill")
  if vim.fn.has("nvim-0.10") ~= 1 then
    error("Neovim 0.10 or newer is needed (inline virtual text)")
  else
    ok(("Neovim %s"):format(tostring(vim.version())))
  end
  if vim.fn.has("nvim-0.12") == 1 then
    info("Neovim 0.12+ has vim.lsp.inline_completion: see :help tabfill-0.12 to use it instead of this plugin's UI")
  end
  local tabfill = require("tabfill")
  local state = tabfill.info()
  local cmd = state.cmd -- the one the user's config set (:help tabfill-trust)
  cmd = type(cmd) == "string" and { cmd } or cmd
  if vim.fn.executable(cmd[1]) == 1 then
    ok(("server command: %s (%s)"):format(table.concat(cmd, " "), vim.fn.exepath(cmd[1])))
  else
    error(("server command not found: %s"):format(cmd[1]), { "pip install tabfill, or set cmd in require('tabfill').setup{}" })
  end
  info(("completion %s; keys: accept %s, word %s, line %s, dismiss %s"):format(
    state.enabled and "enabled" or "disabled (:TabfillToggle)", tabfill.config.keys.accept or "-",
    tabfill.config.keys.accept_word or "-", tabfill.config.keys.accept_line or "-", tabfill.config.keys.dismiss or "-"))

  local status, err = tabfill.server_status(nil, 3000)
  if not status then
    warn("server: " .. tostring(err))
  else
    local model = ("model %s on %s (%s), FIM template %s"):format(
      tostring(status.model), tostring(status.device), tostring(status.dtype), tostring(status.template))
    if status.state == "ready" then
      ok(("server ready: %s; loaded in %s ms"):format(model, tostring(status.loadMs)))
    elseif status.state == "error" or status.state == "failed" then
      error(("model failed to load: %s"):format(tostring(status.error)))
    else
      warn(("server %s: %s"):format(tostring(status.state), model))
    end
  end
  if state.last_latency_ms then
    ok(("last completion: %.0f ms in the editor (request to answer); %d requests, %d answers, %d cancelled"):format(
      state.last_latency_ms, state.requests_sent, state.responses, state.cancelled))
  else
    info("no completion requested yet (type in insert mode in a configured filetype)")
  end
  if status and status.lastLatencyMs ~= nil and status.lastLatencyMs ~= vim.NIL then
    info(("last completion on the server: %.0f ms"):format(status.lastLatencyMs))
  end
  if state.last_error then
    warn("last error: " .. state.last_error)
  end
  if state.restarted > 0 then
    info(("the server was restarted %d times after it stopped on its own (:help tabfill-restart)"):format(state.restarted))
  end
end

return M
