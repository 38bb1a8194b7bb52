-- tabfill for Neovim 0.10 / 0.11: ghost text from `tabfill serve` (textDocument/inlineCompletion).
-- On Neovim 0.12+ the built-in vim.lsp.inline_completion can draw it instead (see :help tabfill-0.12).
local util = require("tabfill.util")
local follow = require("tabfill.follow")
local restart = require("tabfill.restart")
local trust = require("tabfill.trust")

local M = {}

local NAME = "tabfill"
local ns = vim.api.nvim_create_namespace("tabfill")
local group = vim.api.nvim_create_augroup("tabfill", { clear = true })
local uv = vim.uv or vim.loop

local defaults = {
  cmd = { "tabfill", "serve" },
  -- Filetypes to attach to; { "*" } for all normal buffers.
  filetypes = {
    "python", "lua", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust", "c", "cpp",
    "java", "ruby", "sh", "bash", "zsh", "html", "css", "json", "yaml", "toml", "markdown", "vim",
  },
  root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml" },
  -- Sent as initializationOptions and on change as workspace/didChangeConfiguration (see the README's settings).
  settings = {},
  -- Wait after a key before asking: nil adapts it (0 ms while answers come faster than keys, up to
  -- debounce_max_ms when the server is slower than the typing); a number fixes it.
  debounce_ms = nil,
  debounce_max_ms = 150,
  stale_ms = 1500, -- a request unanswered this long no longer holds back the next one
  -- Tell the server where the cursor is before typing starts (InsertEnter, cursor at rest for
  -- warm_delay_ms, buffer entered) so it prefills the prompt there: tabfill/warm.
  warm = true,
  warm_delay_ms = 300,
  auto_trigger = true, -- ask as you type in insert mode; false: only on the `trigger` key
  keys = {
    accept = "<Tab>",
    accept_word = "<M-Right>",
    accept_line = "<M-C-Right>",
    dismiss = "<C-]>",
    trigger = "<M-\\>",
  },
  hl_group = "TabfillSuggestion",
  -- Neovim 0.12+: let vim.lsp.inline_completion draw and accept (this plugin then only starts the
  -- server and maps `keys.accept`); ignored, with a warning, on older versions.
  use_builtin = false,
  -- A server that stops on its own (a crash, kill -9) is restarted: at most max_tries times per outage,
  -- after delays doubling from first_delay_ms (see lua/tabfill/restart.lua); max_tries = 0: never.
  restart = { max_tries = 5, first_delay_ms = 500, max_delay_ms = 8000, stable_ms = 60000 },
}

M.config = vim.deepcopy(defaults)

-- The server command and the settings that name a model, a path or a URL, as the user's own config set them:
-- a project's config (exrc) cannot change them (lua/tabfill/trust.lua), nor can writes to M.config.
local trusted = { cmd = defaults.cmd, settings = {} }

-- What is shown: one suggestion anchored at the cursor it was made for.
---@class tabfill.Suggestion
---@field bufnr integer
---@field row integer 0-based
---@field col integer byte column of the cursor
---@field text string what inserting at the cursor adds (already-typed part of the item stripped)
---@field replace_bytes integer bytes after the cursor on its line that the item replaces
---@field item table the LSP InlineCompletionItem
---@field client_id integer
---@field accepted integer characters of the item accepted so far (partial accepts)
---@field shown_sent boolean
local current = nil

local state = {
  enabled = true,
  builtin = false, -- vim.lsp.inline_completion draws (use_builtin on 0.12+)
  timer = nil, ---@type uv.uv_timer_t|nil
  -- The one request in flight (per buffer: any buffer change cancels it); it stays here, `cancelled`, until
  -- the server answers even a cancelled one, so at most one is ever in flight.
  pending = nil, ---@type {client: table, id: integer, seq: integer, bufnr: integer, row: integer, col: integer, sent_ms: number, explicit: boolean, cancelled: boolean}|nil
  want = nil, ---@type integer|nil ask again (this trigger kind) for the cursor when the request in flight lands
  pace = follow.new_pace(),
  kept = 0, -- requests kept in flight across a key (their answer still fitted)
  max_in_flight = 0,
  in_flight = 0,
  warm_timer = nil, ---@type uv.uv_timer_t|nil
  warmed = nil, ---@type string|nil where the last tabfill/warm was for
  warm_sent = 0,
  seq = 0,
  requests_sent = 0,
  responses = 0,
  cancelled = 0,
  last_latency_ms = nil, ---@type number|nil
  last_error = nil, ---@type string|nil
  last_request = nil, ---@type {bufnr: integer, row: integer, col: integer}|nil
  last_answer = nil, ---@type {bufnr: integer, row: integer, col: integer, text: string, source: string?, partial: boolean?}|nil
  ready_seen = 0, -- tabfill/completionReady notifications received
  ready_unfinished = 0, -- of which said the answer will not be whole (finished = false)
  ready_requests = 0, -- ... that asked again (the cursor was still where the cut answer was for)
  fallbacks = {}, ---@type table<string, table>
  restarts = restart.new(defaults.restart),
  restart_timer = nil, ---@type uv.uv_timer_t|nil
  restarted = 0, -- servers started again after they stopped on their own
  resume = false, -- after a restart: ask again once the model is loaded ($/progress end)
}

-- ---------------------------------------------------------------------------- clients
--- Settings as a JSON object even when empty (an empty Lua table would be sent as `[]`); the user-only
--- ones (model, engine, ...) always from the user's own config.
local function settings_object()
  local settings = vim.tbl_extend("force", (trust.without_user_only(M.config.settings)), trusted.settings)
  return next(settings) == nil and vim.empty_dict() or settings
end

local function client_for(bufnr)
  local clients = util.get_clients({ name = NAME, bufnr = bufnr })
  return clients[1]
end

local function filetype_enabled(ft)
  for _, allowed in ipairs(M.config.filetypes) do
    if allowed == "*" or allowed == ft then
      return true
    end
  end
  return false
end

local on_completion_ready -- tabfill/completionReady handler (below, with the requests)
local on_exit -- a server stopped (below)
local request -- textDocument/inlineCompletion at the cursor (below)

local function now_ms()
  return uv.hrtime() / 1e6
end

--- Start (or reuse) the server for a buffer; the client id, or nil when none was started.
local function start_client(bufnr)
  if vim.bo[bufnr].buftype ~= "" or not filetype_enabled(vim.bo[bufnr].filetype) then
    return nil
  end
  local cmd = trusted.cmd
  if type(cmd) == "string" then
    cmd = { cmd }
  end
  if vim.fn.executable(cmd[1]) ~= 1 then
    state.last_error = ("`%s` is not executable (set cmd in require('tabfill').setup)"):format(cmd[1])
    vim.notify_once("tabfill: " .. state.last_error, vim.log.levels.WARN)
    return nil
  end
  local root = vim.fs.root and vim.fs.root(bufnr, M.config.root_markers) or nil
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  -- Byte columns (utf-8) when the server agrees: no conversion between Neovim and the server.
  capabilities.general = vim.tbl_extend("force", capabilities.general or {}, { positionEncodings = { "utf-8", "utf-16" } })
  capabilities.textDocument = capabilities.textDocument or {}
  capabilities.textDocument.inlineCompletion = { dynamicRegistration = false }
  return vim.lsp.start({
    name = NAME,
    cmd = cmd,
    root_dir = root or vim.fn.getcwd(),
    capabilities = capabilities,
    init_options = settings_object(),
    settings = { tabfill = settings_object() },
    handlers = { ["tabfill/completionReady"] = on_completion_ready },
    on_init = function()
      state.restarts:running(now_ms())
    end,
    on_exit = function(code, signal, client_id)
      on_exit(code, signal, client_id)
    end,
  }, { bufnr = bufnr })
end

--- The server stopped without being asked to, or a restart failed: start it again for `buffers` after the
--- policy's delay (vim.lsp.start sends each buffer's current text in didOpen); say so once per outage.
local function crashed(reason, buffers)
  local decision = state.restarts:crashed(now_ms())
  if decision.action == "give_up" then
    state.last_error = ("the server stopped %d times in a row (last: %s); not restarting it. Fix the cause (:TabfillLog), then :TabfillRestart")
      :format(decision.attempt + 1, reason)
    if decision.announce then
      vim.notify("tabfill: " .. state.last_error, vim.log.levels.ERROR)
    end
    return
  end
  state.last_error = ("%s; restart %d of %d in %d ms"):format(reason, decision.attempt, state.restarts.policy.max_tries, decision.delay_ms)
  if decision.announce then
    vim.notify(("tabfill: %s; restarting it (open buffers are sent to the new server)"):format(reason), vim.log.levels.WARN)
  end
  state.restart_timer = state.restart_timer or uv.new_timer()
  state.restart_timer:stop()
  state.restart_timer:start(decision.delay_ms, 0, vim.schedule_wrap(function()
    local started = false
    for _, bufnr in ipairs(buffers) do
      if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_buf_is_loaded(bufnr) and start_client(bufnr) then
        started = true
      end
    end
    if started then
      state.restarted = state.restarted + 1
      state.resume = true
    elseif #buffers > 0 then
      crashed("the server could not be started", buffers)
    end
  end))
end

on_exit = function(code, signal, client_id)
  local client = util.get_client_by_id(client_id)
  -- NOTE: read now: the client is forgotten soon after (on the main loop)
  local stopping = client == nil or client._is_stopping == true -- client:stop(), :LspStop, Neovim exiting
  local buffers = client and vim.tbl_keys(client.attached_buffers or {}) or {}
  vim.schedule(function()
    local p = state.pending
    if p and p.client.id == client_id then
      state.pending, state.in_flight = nil, math.max(0, state.in_flight - 1) -- it will never be answered
    end
    if code ~= 0 or signal ~= 0 then
      state.last_error = ("server exited with code %d (signal %d); see :LspLog"):format(code, signal or 0)
    end
    if stopping or vim.v.exiting ~= vim.NIL or (code == 0 and signal == 0) then
      return
    end
    if state.restarts.policy.max_tries > 0 then
      table.sort(buffers)
      crashed(signal ~= 0 and ("the server was killed by signal %d"):format(signal) or ("the server exited with code %d"):format(code), buffers)
    end
  end)
end

--- $/progress end (the model is loaded) after a restart: ask again at the cursor, without waiting for a key.
local function on_progress(args)
  local data = args.data or {}
  local value = data.params and data.params.value
  local client = data.client_id and util.get_client_by_id(data.client_id)
  if not (state.resume and client and client.name == NAME and type(value) == "table" and value.kind == "end") then
    return
  end
  state.resume = false
  local bufnr = vim.api.nvim_get_current_buf()
  if state.enabled and not state.builtin and vim.fn.mode() == "i" and client_for(bufnr) == client then
    request(2)
  end
end

-- ---------------------------------------------------------------------------- drawing
local function clear()
  if current and vim.api.nvim_buf_is_valid(current.bufnr) then
    vim.api.nvim_buf_clear_namespace(current.bufnr, ns, 0, -1)
  end
  current = nil
end

--- `n` bytes of suggestion `s` were typed or accepted: it now starts at column `col`.
local function advance(s, n, col)
  s.text, s.col, s.cuts = s.text:sub(n + 1), col, follow.shift_cuts(s.cuts, n)
end

local function render()
  if not current then
    return
  end
  local s = current
  vim.api.nvim_buf_clear_namespace(s.bufnr, ns, 0, -1)
  local lines = vim.split(follow.shown_part(s.text, s.cuts), "\n", { plain = true })
  local opts = { hl_mode = "combine", priority = 200, right_gravity = true }
  if lines[1] ~= "" then
    opts.virt_text = { { lines[1], M.config.hl_group } }
    opts.virt_text_pos = "inline"
  end
  if #lines > 1 then
    local virt_lines = {}
    for i = 2, #lines do
      virt_lines[#virt_lines + 1] = lines[i] == "" and {} or { { lines[i], M.config.hl_group } }
    end
    opts.virt_lines = virt_lines
  end
  vim.api.nvim_buf_set_extmark(s.bufnr, ns, s.row, s.col, opts)
  if not s.shown_sent then
    s.shown_sent = true
    local client = util.get_client_by_id(s.client_id)
    if client then
      util.notify(client, "textDocument/didShowCompletion", { item = s.item })
    end
  end
end

-- ---------------------------------------------------------------------------- requests

--- Cancel the request in flight; its slot frees when the server answers it (or it goes stale).
local function cancel_pending()
  local p = state.pending
  if p and not p.cancelled then
    util.cancel_request(p.client, p.id)
    state.cancelled = state.cancelled + 1
    p.cancelled = true
  end
end

local function cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

--- The suggestion from an item for the cursor: nil when it does not fit where the cursor is.
local function suggestion_from(item, bufnr, row, col, encoding, client_id)
  local insert = item.insertText
  if type(insert) == "table" then -- a StringValue (snippet): take its text
    insert = insert.value
  end
  if type(insert) ~= "string" or insert == "" then
    return nil
  end
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local start_col, end_col, end_row = col, col, row
  if item.range then
    start_col = util.byte_col(line, item.range.start.character, encoding)
    end_row = item.range["end"].line
    if item.range.start.line ~= row or end_row ~= row then
      return nil -- only edits on the cursor's line are shown as ghost text
    end
    end_col = util.byte_col(line, item.range["end"].character, encoding)
  end
  if start_col > col or end_col < col then
    return nil
  end
  local typed = line:sub(start_col + 1, col)
  if insert:sub(1, #typed) ~= typed then
    return nil -- the item replaces text before the cursor with something else
  end
  local text = insert:sub(#typed + 1)
  if text == "" then
    return nil
  end
  local argument = item.command and type(item.command.arguments) == "table" and item.command.arguments[1]
  return {
    cuts = follow.cuts_of(type(argument) == "table" and argument.pieces, insert, #typed),
    bufnr = bufnr,
    row = row,
    col = col,
    text = text,
    replace_bytes = end_col - col,
    item = item,
    client_id = client_id,
    accepted = 0,
    shown_sent = false,
  }
end

--- The request in flight has landed (answered, failed or cancelled): free its slot, ask again if wanted.
local function landed(seq)
  if not (state.pending and state.pending.seq == seq) then
    return false
  end
  state.pending = nil
  state.in_flight = math.max(0, state.in_flight - 1)
  local kind = state.want
  if kind then
    state.want = nil
    vim.schedule(function()
      if kind == 1 or not (state.timer and state.timer:is_active()) then
        request(kind)
      end
    end)
  end
  return true
end

--- LspRequest: a cancelled request in flight got its answer (which Neovim does not pass on).
local function on_lsp_request(args)
  local p, data = state.pending, args.data or {}
  if p and p.cancelled and data.request_id == p.id and data.client_id == p.client.id and data.request
    and data.request.type == "complete" then
    landed(p.seq)
  end
end

request = function(trigger_kind)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = client_for(bufnr)
  if not client or not state.enabled or vim.fn.mode() ~= "i" then
    return
  end
  local p = state.pending
  if p and now_ms() - p.sent_ms > M.config.stale_ms then
    state.pending, state.in_flight = nil, math.max(0, state.in_flight - 1) -- lost: no longer holds the slot
  elseif p then
    if trigger_kind == 1 then
      cancel_pending()
    end
    state.want = math.min(state.want or 2, trigger_kind or 2) -- one in flight: ask when it lands
    return
  end
  local row, col = cursor()
  local encoding = client.offset_encoding or "utf-16"
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = row, character = util.encoded_col(line, col, encoding) },
    context = { triggerKind = trigger_kind or 2 },
  }
  state.seq = state.seq + 1
  local seq = state.seq
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local started = uv.hrtime()
  state.last_request = { bufnr = bufnr, row = row, col = col }

  --- Show the answer; true when the cursor moved on since it was asked (so ask again there).
  local function show(err, result)
    if err then
      if err.code ~= -32800 then -- RequestCancelled
        state.last_error = err.message
      end
      return false
    end
    state.responses = state.responses + 1
    state.last_latency_ms = (uv.hrtime() - started) / 1e6
    follow.answered(state.pace, state.last_latency_ms)
    state.last_error = nil
    if not vim.api.nvim_buf_is_valid(bufnr) or vim.api.nvim_get_current_buf() ~= bufnr or vim.fn.mode() ~= "i" then
      return false
    end
    -- NOTE: kept across keys, the answer still counts where the user typed into it since (no round trip)
    local now_row, now_col = cursor()
    if now_row ~= row or now_col < col or (now_col == col and vim.api.nvim_buf_get_changedtick(bufnr) ~= tick) then
      return false
    end
    local now_line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
    local typed = now_line:sub(col + 1, now_col)
    local suggestion = nil
    for _, item in ipairs(result and (result.items or result) or {}) do
      suggestion = suggestion_from(item, bufnr, row, col, encoding, client.id)
      if suggestion then
        break
      end
    end
    if suggestion and follow.rest_after(suggestion.text, typed) then
      advance(suggestion, #typed, now_col)
    else
      suggestion = nil
    end
    local argument = suggestion and suggestion.item.command and (suggestion.item.command.arguments or {})[1]
    argument = type(argument) == "table" and argument or {}
    state.last_answer = {
      bufnr = bufnr,
      row = row,
      col = now_col, -- where it is shown: the request's column plus what was typed since
      asked_col = col,
      text = suggestion and suggestion.text or "",
      source = argument.source, -- "model", "cache", ... (the server's accept-command argument)
      partial = argument.partial, -- true: cut by the server's deadline
    }
    if suggestion or not (current and current.bufnr == bufnr and current.row == row and current.col == now_col) then
      clear() -- NOTE: an empty answer leaves a suggestion kept for this very place on screen
      current = suggestion
      render()
    end
    return typed ~= ""
  end

  local ok, id = util.request(client, "textDocument/inlineCompletion", params, function(err, result)
    local mine = state.pending and state.pending.seq == seq and state.pending
    if not mine then
      return -- went stale, or the buffer was left
    end
    if not mine.cancelled and show(err, result) then
      state.want = state.want or 2
    end
    landed(seq)
  end, bufnr)
  if ok and id then
    state.requests_sent = state.requests_sent + 1
    state.in_flight = state.in_flight + 1
    state.max_in_flight = math.max(state.max_in_flight, state.in_flight)
    state.pending = {
      client = client, id = id, seq = seq, bufnr = bufnr, row = row, col = col, sent_ms = now_ms(),
      explicit = trigger_kind == 1, cancelled = false,
    }
  end
end

--- `tabfill/completionReady`: an answer cut by the server's deadline is now whole (in the server's result
--- cache). Ask again at once when nothing moved since: same buffer and document version, same cursor,
--- still in insert mode, and this plugin's last request was for that position. `finished = false` says
--- the server's background generation stopped before the end (time cap, preempted, superseded): the next
--- request there resumes it, so asking again at once would only restart capped work.
on_completion_ready = function(_, params, ctx)
  state.ready_seen = state.ready_seen + 1
  if state.builtin then
    return -- NOTE: vim.lsp.inline_completion (0.12) has no API to ask again without a keystroke
  end
  if type(params) ~= "table" or type(params.textDocument) ~= "table" or type(params.position) ~= "table" then
    return
  end
  if params.finished == false then
    state.ready_unfinished = state.ready_unfinished + 1
    return
  end
  local bufnr = vim.api.nvim_get_current_buf()
  local client = util.get_client_by_id(ctx and ctx.client_id or -1)
  if not client or not state.enabled or vim.fn.mode() ~= "i" or client_for(bufnr) ~= client then
    return
  end
  if params.textDocument.uri ~= vim.uri_from_bufnr(bufnr) or params.textDocument.version ~= vim.lsp.util.buf_versions[bufnr] then
    return
  end
  local row, col = cursor()
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local encoding = client.offset_encoding or "utf-16"
  if params.position.line ~= row or params.position.character ~= util.encoded_col(line, col, encoding) then
    return
  end
  local last = state.last_request
  if not last or last.bufnr ~= bufnr or last.row ~= row or last.col ~= col then
    return -- not our request (e.g. textDocument/completion from a completion plugin)
  end
  if state.timer then
    state.timer:stop()
  end
  state.ready_requests = state.ready_requests + 1
  request(2)
end

local function schedule_request()
  if not state.enabled or not M.config.auto_trigger then
    return
  end
  state.timer = state.timer or uv.new_timer()
  state.timer:stop()
  state.timer:start(M.debounce_ms(), 0, vim.schedule_wrap(function()
    request(2)
  end))
end

--- The debounce now: fixed by `debounce_ms`, else from the key pace and the server's latency.
function M.debounce_ms()
  return follow.debounce_ms(state.pace, now_ms(), M.config.debounce_ms, M.config.debounce_max_ms)
end

--- After the buffer or cursor changed: keep what the user typed through, hide the rest, ask again.
local function on_change(args)
  local bufnr = vim.api.nvim_get_current_buf()
  if not client_for(bufnr) then
    return
  end
  local agreed = false -- the key agreed with the suggestion on screen
  if args and args.event ~= "CursorMovedI" then
    follow.key(state.pace, now_ms())
  end
  if current then
    local row, col = cursor()
    local s = current
    local keep = false
    if s.bufnr == bufnr and row == s.row and col >= s.col then
      local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
      local typed = line:sub(s.col + 1, col)
      if col == s.col then
        keep, agreed = true, true -- e.g. this key's other event, or our own insertion, moved the anchor
      else
        if follow.rest_after(s.text, typed) then
          advance(s, #typed, col)
          keep, agreed = true, true
        end
      end
    end
    if keep then
      render()
    else
      clear()
    end
  end
  local p = state.pending
  if p and not p.cancelled then
    local row, col = cursor()
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
    local typed = row == p.row and col >= p.col and line:sub(p.col + 1, col) or "\n"
    if p.bufnr == bufnr and follow.keep_in_flight(p, row, col, typed, now_ms(), agreed, state.pace, M.config.stale_ms) then
      state.kept = state.kept + 1
    else
      cancel_pending()
    end
  end
  schedule_request()
end

--- tabfill/warm: tell the server where the cursor is, so it prefills the prompt there before the first key
--- (once per place and buffer state). Neovim sends pending changes before a notification.
local function warm()
  local bufnr = vim.api.nvim_get_current_buf()
  local client = client_for(bufnr)
  if not M.config.warm or not state.enabled or not client then
    return
  end
  local row, col = cursor()
  local place = table.concat({ bufnr, row, col, vim.api.nvim_buf_get_changedtick(bufnr) }, ":")
  if place == state.warmed then
    return
  end
  state.warmed = place
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  util.notify(client, "tabfill/warm", {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = row, character = util.encoded_col(line, col, client.offset_encoding or "utf-16") },
  })
  state.warm_sent = state.warm_sent + 1
end

--- Warm once the cursor has rested for warm_delay_ms (normal mode, buffer entered, editor focused).
local function warm_at_rest()
  if not M.config.warm then
    return
  end
  state.warm_timer = state.warm_timer or uv.new_timer()
  state.warm_timer:stop()
  state.warm_timer:start(M.config.warm_delay_ms, 0, vim.schedule_wrap(function()
    if vim.fn.mode() == "n" then
      warm()
    end
  end))
end

-- ---------------------------------------------------------------------------- accepting
local function send_accept(s)
  local client = util.get_client_by_id(s.client_id)
  if client and s.item.command then
    util.request(client, "workspace/executeCommand", {
      command = s.item.command.command,
      arguments = s.item.command.arguments,
    }, function() end, s.bufnr)
  end
end

--- Insert `chunk` (a prefix of the suggestion) at the cursor; `last` also replaces the item's range end.
local function insert(s, chunk, last)
  local lines = vim.split(chunk, "\n", { plain = true })
  local end_col = s.col + (last and s.replace_bytes or 0)
  vim.api.nvim_buf_set_text(s.bufnr, s.row, s.col, s.row, end_col, lines)
  local new_row = s.row + #lines - 1
  local new_col = (#lines == 1 and s.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { new_row + 1, new_col })
  return new_row, new_col
end

local function next_word(text)
  local first_line_end = text:find("\n", 1, true)
  if first_line_end == 1 then
    return text:match("^\n[ \t]*") -- the line break and the next line's indentation
  end
  local line = first_line_end and text:sub(1, first_line_end - 1) or text
  return line:match("^%s*[%w_]+") or line:match("^%s*[^%w_%s]+") or line:match("^%s+") or line:sub(1, 1)
end

local function next_line(text)
  local first_line_end = text:find("\n", 1, true)
  if not first_line_end then
    return text
  end
  if first_line_end == 1 then
    local second = text:find("\n", 2, true)
    return second and text:sub(1, second - 1) or text
  end
  return text:sub(1, first_line_end - 1)
end

local function accept_whole(s)
  clear()
  insert(s, s.text, true)
  send_accept(s)
  return true
end

--- Accept `pick(shown text)` of the suggestion on screen (all of it: the whole suggestion); false when none.
local function accept_part(pick)
  local s = current
  if not s or s.bufnr ~= vim.api.nvim_get_current_buf() then
    return false
  end
  local chunk = pick(follow.shown_part(s.text, s.cuts))
  if chunk == nil or chunk == "" or chunk == s.text then
    return accept_whole(s)
  end
  local row, col = insert(s, chunk, false)
  s.accepted = s.accepted + vim.fn.strchars(chunk)
  s.row = row
  advance(s, #chunk, col)
  render()
  local client = util.get_client_by_id(s.client_id)
  if client then
    util.notify(client, "textDocument/didPartiallyAcceptCompletion", { item = s.item, acceptedLength = s.accepted })
  end
  return true
end

--- Accept what is shown: the whole suggestion, or the piece of it the model was sure of (the next piece is
--- shown then); returns false when nothing is shown.
function M.accept()
  return accept_part(function(shown)
    return shown
  end)
end

function M.accept_word()
  return accept_part(next_word)
end

function M.accept_line()
  return accept_part(next_line)
end

function M.dismiss()
  if not current then
    return false
  end
  clear()
  cancel_pending()
  return true
end

--- Ask now (also when auto_trigger is off).
function M.trigger()
  if state.timer then
    state.timer:stop()
  end
  request(1)
  return true
end

function M.visible()
  return current ~= nil and current.bufnr == vim.api.nvim_get_current_buf()
end

function M.enable()
  state.enabled = true
end

function M.disable()
  state.enabled = false
  M.dismiss()
end

function M.toggle()
  if state.enabled then
    M.disable()
  else
    M.enable()
  end
  vim.notify("tabfill " .. (state.enabled and "enabled" or "disabled"))
end

--- For :checkhealth, :TabfillStatus and tests.
function M.info()
  return {
    enabled = state.enabled,
    visible = current ~= nil,
    suggestion = current and current.text or nil,
    anchor = current and { row = current.row, col = current.col } or nil,
    requests_sent = state.requests_sent,
    responses = state.responses,
    cancelled = state.cancelled,
    pending = state.pending ~= nil,
    last_latency_ms = state.last_latency_ms,
    last_error = state.last_error,
    last_request = state.last_request,
    last_answer = state.last_answer,
    ready_seen = state.ready_seen,
    ready_unfinished = state.ready_unfinished,
    ready_requests = state.ready_requests,
    kept = state.kept,
    in_flight = state.in_flight,
    max_in_flight = state.max_in_flight,
    debounce_ms = M.debounce_ms(),
    key_interval_ms = follow.interval(state.pace, now_ms()),
    server_latency_ms = state.pace.latency_ms,
    warm_sent = state.warm_sent,
    restarted = state.restarted,
    restart_attempts = state.restarts.attempts,
    cmd = trusted.cmd,
    settings = settings_object(),
  }
end

--- :TabfillRestart: stop the servers and start them again for the loaded buffers (also after the
--- automatic restarts gave up).
function M.restart()
  state.restarts:reset()
  if state.restart_timer then
    state.restart_timer:stop()
  end
  for _, client in ipairs(util.get_clients({ name = NAME })) do
    util.stop(client)
  end
  local timer, waited = uv.new_timer(), 0
  timer:start(0, 50, vim.schedule_wrap(function()
    waited = waited + 50
    if #util.get_clients({ name = NAME }) > 0 and waited < 5000 then
      return -- still stopping: vim.lsp.start would reuse it
    end
    timer:stop()
    timer:close()
    for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
      if vim.api.nvim_buf_is_loaded(bufnr) then
        start_client(bufnr)
      end
    end
    state.resume = true
  end))
end

--- The server's `tabfill/status` (model, device, state, last timings), synchronously; nil, err on failure.
function M.server_status(bufnr, timeout_ms)
  local client = client_for(bufnr or vim.api.nvim_get_current_buf()) or util.get_clients({ name = NAME })[1]
  if not client then
    return nil, "no tabfill client is running (open a file of a configured filetype)"
  end
  local response, err = util.request_sync(client, "tabfill/status", vim.NIL, timeout_ms or 2000)
  if not response then
    return nil, err or "no answer"
  end
  if response.err then
    return nil, response.err.message
  end
  return response.result, nil
end

--- Why a project's config could not set these options (nothing when it set none of them).
local function ignored_from_project(origin, names)
  if #names > 0 then
    vim.notify(("tabfill: ignored %s from %s: a project's config cannot set them; set them in your own config (:help tabfill-trust)")
      :format(table.concat(names, ", "), origin), vim.log.levels.WARN)
  end
end

function M.update_settings(settings)
  settings = settings or {}
  local origin = trust.project_origin()
  if origin then
    local kept, removed = trust.without_user_only(settings)
    ignored_from_project(origin, removed)
    settings = kept
  else
    trusted.settings = vim.tbl_extend("force", trusted.settings, trust.user_only(settings))
  end
  M.config.settings = vim.tbl_deep_extend("force", M.config.settings, settings)
  -- NOTE: a client still starting sends its settings once initialized (Neovim's own didChangeConfiguration)
  for _, client in ipairs(util.get_clients({ name = NAME, _uninitialized = true })) do
    client.settings = { tabfill = settings_object() }
    client.config.settings = client.settings
    if client.initialized then
      util.notify(client, "workspace/didChangeConfiguration", { settings = client.settings })
    end
  end
end

-- ---------------------------------------------------------------------------- keys
local function feed_fallback(lhs)
  local original = state.fallbacks[lhs]
  if original and not vim.tbl_isempty(original) then
    local rhs = original.rhs or ""
    if original.callback then
      local result = original.callback()
      if original.expr == 1 and type(result) == "string" then
        rhs = result
      else
        return
      end
    elseif original.expr == 1 then
      rhs = vim.api.nvim_eval(rhs)
    end
    local keys = original.expr == 1 and original.replace_keycodes ~= 1 and rhs
      or vim.api.nvim_replace_termcodes(rhs, true, false, true)
    vim.api.nvim_feedkeys(keys, original.noremap == 1 and "n" or "m", false)
    return
  end
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(lhs, true, false, true), "n", false)
end

local function map(lhs, action)
  if not lhs or lhs == "" then
    return
  end
  local existing = vim.fn.maparg(lhs, "i", false, true)
  if existing and existing.desc ~= "tabfill" then
    state.fallbacks[lhs] = existing
  end
  vim.keymap.set("i", lhs, function()
    if not action() then
      feed_fallback(lhs)
    end
  end, { desc = "tabfill", silent = true })
end

-- ---------------------------------------------------------------------------- setup
function M.setup(opts)
  opts = vim.deepcopy(opts or {})
  local origin = trust.project_origin() -- a project's .nvim.lua / exrc: not the server command nor model
  local ignored = {}
  if origin then
    if opts.cmd ~= nil then
      ignored[1], opts.cmd = "cmd", nil
    end
    local removed
    opts.settings, removed = trust.without_user_only(opts.settings)
    vim.list_extend(ignored, removed)
  end
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts)
  for _, list in ipairs({ "filetypes", "cmd" }) do
    if opts[list] then
      M.config[list] = opts[list] -- a list replaces, it does not merge
    end
  end
  if origin then
    M.config.cmd = trusted.cmd
    ignored_from_project(origin, ignored)
  else
    trusted.cmd = M.config.cmd
    trusted.settings = trust.user_only(M.config.settings)
  end
  state.restarts = restart.new(M.config.restart)
  vim.api.nvim_set_hl(0, "TabfillSuggestion", { link = "Comment", default = true })
  vim.api.nvim_clear_autocmds({ group = group })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    callback = function(args)
      start_client(args.buf)
    end,
  })
  local keys = M.config.keys
  local builtin = M.config.use_builtin and vim.lsp.inline_completion or nil
  if M.config.use_builtin and not (builtin and builtin.enable and builtin.get) then
    builtin = nil
    vim.notify("tabfill: use_builtin needs Neovim 0.12 (vim.lsp.inline_completion); using tabfill's ghost text",
      vim.log.levels.WARN)
  end
  state.builtin = builtin ~= nil
  if builtin then
    builtin.enable(true)
    map(keys.accept, function()
      return builtin.get() and true or false
    end)
  else
    vim.api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI" }, {
      group = group,
      callback = on_change,
    })
    vim.api.nvim_create_autocmd("TextChangedP", { group = group, callback = on_change })
    vim.api.nvim_create_autocmd("InsertEnter", {
      group = group,
      callback = function()
        warm() -- NOTE: before the first key; a request on entering (auto_trigger) follows the debounce
        schedule_request()
      end,
    })
    vim.api.nvim_create_autocmd({ "CursorMoved", "BufEnter", "FocusGained" }, { group = group, callback = warm_at_rest })
    -- NOTE: Neovim drops the handler of a request the server answers with RequestCancelled; this event
    -- still tells that a cancelled request in flight has landed.
    vim.api.nvim_create_autocmd("LspRequest", { group = group, callback = on_lsp_request })
    vim.api.nvim_create_autocmd("LspProgress", { group = group, callback = on_progress })
    vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
      group = group,
      callback = function()
        if state.timer then
          state.timer:stop()
        end
        cancel_pending()
        clear()
      end,
    })
    map(keys.accept, M.accept)
    map(keys.accept_word, M.accept_word)
    map(keys.accept_line, M.accept_line)
    map(keys.dismiss, M.dismiss)
    map(keys.trigger, M.trigger)
  end
  -- buffers that are already open
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.bo[bufnr].filetype ~= "" then
      start_client(bufnr)
    end
  end
end

--- For tests: draw `item` (an LSP InlineCompletionItem) as if the server had answered it at the cursor
--- (positions in `encoding`, default: the client's).
function M._show(item, encoding)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = client_for(bufnr)
  local row, col = cursor()
  clear()
  encoding = encoding or (client and client.offset_encoding) or "utf-8"
  current = suggestion_from(item, bufnr, row, col, encoding, client and client.id or -1)
  render()
  return current ~= nil
end

M._next_word = next_word
M._next_line = next_line

return M
