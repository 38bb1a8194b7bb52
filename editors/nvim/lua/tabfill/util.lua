-- Neovim 0.10 / 0.11 differences in one place: method-style client calls and str_byteindex.
local M = {}

local has_011 = vim.fn.has("nvim-0.11") == 1

function M.get_clients(filter)
  return (vim.lsp.get_clients or vim.lsp.get_active_clients)(filter)
end

function M.get_client_by_id(id)
  return vim.lsp.get_client_by_id(id)
end

--- client:request (0.11) / client.request (0.10); returns ok, request id.
function M.request(client, method, params, handler, bufnr)
  if has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.request_sync(client, method, params, timeout_ms, bufnr)
  if has_011 then
    return client:request_sync(method, params, timeout_ms, bufnr)
  end
  return client.request_sync(method, params, timeout_ms, bufnr)
end

function M.notify(client, method, params)
  if has_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.stop(client)
  if has_011 then
    return client:stop()
  end
  return client.stop()
end

--- Sends $/cancelRequest for a request that is still running.
function M.cancel_request(client, id)
  if client.is_stopped and (has_011 and client:is_stopped() or not has_011 and client.is_stopped()) then
    return
  end
  if has_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

--- Byte column of an LSP character offset on `line` in the negotiated encoding (clamped to the line).
function M.byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local units = M.encoded_col(line, #line, encoding)
  if character >= units then
    return #line
  end
  if has_011 then
    return vim.str_byteindex(line, encoding, character, false)
  end
  return vim.str_byteindex(line, character, encoding == "utf-16")
end

--- LSP character offset of byte column `col` on `line` in the negotiated encoding.
function M.encoded_col(line, col, encoding)
  if encoding == "utf-8" then
    return col
  end
  if has_011 then
    return vim.str_utfindex(line, encoding, col, false)
  end
  local utf32, utf16 = vim.str_utfindex(line, col)
  return encoding == "utf-16" and utf16 or utf32
end

return M
