-- Which settings a project's own config may not set, and telling a project's config from the user's.
--
-- The server command (`cmd`) and the server settings that name a model, a path, a hub id or a URL (or a key
-- for one) run a program, read files or send code somewhere. They are taken only from the user's own config:
-- a call of setup() or update_settings() that comes from a project-local config file (the 'exrc' files
-- .nvim.lua, .nvimrc and .exrc, or a Lua file the project loads by a path relative to the current directory)
-- keeps its other options but not these; the values from the user's config stay.
--
-- How a call is attributed: every Lua function remembers the file it was defined in, so the call stack
-- tells, also for a callback a .nvim.lua deferred (vim.schedule, an autocommand, a timer); for Vimscript
-- (.nvimrc, .exrc) the script stack (`expand('<stack>')`) tells while the file is being sourced.
-- NOTE: code in a trusted exrc file runs with your rights and can do anything; this keeps the plugin from
-- *taking* these settings from there (as VS Code's "machine" scope does for a workspace's settings.json).
local M = {}

local EXRC = { [".nvim.lua"] = true, [".nvimrc"] = true, [".exrc"] = true }

--- Server settings (by their snake_case name; the server accepts camelCase too) only the user may set.
M.SERVER_SETTINGS = { model = true, engine = true, engine_model = true, engine_token = true, engine_api_key = true }

local function snake(key)
  return (tostring(key):gsub("%u", function(c)
    return "_" .. c:lower()
  end))
end

local function absolute(path)
  return path:sub(1, 1) == "/" or path:match("^%a:[/\\]") ~= nil or path:sub(1, 2) == "\\\\"
end

--- The project-local config file this call comes from, or nil when it comes from the user's config (or an
--- RPC client, or a command typed by the user).
function M.project_origin()
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info then
      break
    end
    local source = info.source or ""
    if source:sub(1, 1) == "@" then
      local path = source:sub(2)
      if EXRC[vim.fs.basename(path)] or not absolute(path) then
        return path
      end
    end
    level = level + 1
  end
  local ok, stack = pcall(vim.fn.expand, "<stack>")
  if ok and type(stack) == "string" then
    for name in pairs(EXRC) do
      if stack:find(name, 1, true) then
        return name
      end
    end
  end
  return nil
end

--- The server settings as one flat table (the server also takes them nested under `tabfill`).
function M.flat(settings)
  settings = settings or {}
  if type(settings.tabfill) == "table" then
    return vim.deepcopy(settings.tabfill)
  end
  return vim.deepcopy(settings)
end

--- settings without the user-only ones; the names removed.
function M.without_user_only(settings)
  local kept, removed = {}, {}
  for key, value in pairs(M.flat(settings)) do
    if M.SERVER_SETTINGS[snake(key)] then
      removed[#removed + 1] = "settings." .. key
    else
      kept[key] = value
    end
  end
  table.sort(removed)
  return kept, removed
end

--- Only the user-only settings of `settings`.
function M.user_only(settings)
  local picked = {}
  for key, value in pairs(M.flat(settings)) do
    if M.SERVER_SETTINGS[snake(key)] then
      picked[key] = value
    end
  end
  return picked
end

return M
