-- User commands; completion starts with require("tabfill").setup{...}.
if vim.g.loaded_tabfill then
  return
end
vim.g.loaded_tabfill = true

vim.api.nvim_create_user_command("TabfillToggle", function()
  require("tabfill").toggle()
end, { desc = "tabfill: turn completion on or off" })

vim.api.nvim_create_user_command("TabfillStatus", function()
  local tabfill = require("tabfill")
  local status, err = tabfill.server_status(nil, 3000)
  local editor = tabfill.info()
  local latency = editor.last_latency_ms and ("%.0f ms"):format(editor.last_latency_ms) or "-"
  if not status then
    vim.notify(("tabfill: %s (last latency %s)"):format(err, latency), vim.log.levels.WARN)
    return
  end
  vim.notify(("tabfill: %s, model %s on %s, last latency %s"):format(status.state, status.model, status.device, latency))
end, { desc = "tabfill: server state, model and last latency" })

vim.api.nvim_create_user_command("TabfillRestart", function()
  require("tabfill").restart()
end, { desc = "tabfill: restart the server (also after automatic restarts gave up)" })

vim.api.nvim_create_user_command("TabfillLog", function()
  vim.cmd("LspLog")
end, { desc = "tabfill: open the LSP log" })
