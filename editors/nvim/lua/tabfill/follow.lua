-- Typing-follow decisions, free of editor state (unit-tested in tests/editors/test_nvim_follow.py):
-- the user's key pace and the server's latency, the debounce they call for, whether a request in flight
-- is still worth its answer after a key, and what of a suggestion is left after typing into it.
local M = {}

M.PAUSE_MS = 1000 -- a longer gap between keys is a pause: the user is not typing then
M.SMOOTHING = 0.3 -- weight of the newest key interval / latency in the moving averages

---@class tabfill.Pace
---@field key_ms number|nil moving average of the interval between keys while typing
---@field last_key_ms number|nil when the last key was typed
---@field latency_ms number|nil moving average of the server's answer time

---@return tabfill.Pace
function M.new_pace()
  return { key_ms = nil, last_key_ms = nil, latency_ms = nil }
end

local function average(previous, value)
  if previous == nil then
    return value
  end
  return (1 - M.SMOOTHING) * previous + M.SMOOTHING * value
end

--- A key was typed at `now_ms`.
function M.key(pace, now_ms)
  local last = pace.last_key_ms
  pace.last_key_ms = now_ms
  if last ~= nil and now_ms - last <= M.PAUSE_MS then
    pace.key_ms = average(pace.key_ms, now_ms - last)
  end
end

--- The server answered a request after `latency_ms`.
function M.answered(pace, latency_ms)
  pace.latency_ms = average(pace.latency_ms, latency_ms)
end

--- The key interval while the user types (the last key within PAUSE_MS of `now_ms`), else nil.
function M.interval(pace, now_ms)
  if pace.key_ms == nil or pace.last_key_ms == nil or now_ms - pace.last_key_ms > M.PAUSE_MS then
    return nil
  end
  return pace.key_ms
end

--- Milliseconds to wait after a key before asking. `fixed` (a number) fixes it. Otherwise 0 when answers
--- come faster than keys (or either is unknown): the answer is on screen before the next key; when the
--- server is slower than the typing, the time it lags behind a key, at most `max_ms`: a request sent at
--- every key would only be overtaken by the next one.
function M.debounce_ms(pace, now_ms, fixed, max_ms)
  if type(fixed) == "number" then
    return math.max(0, fixed)
  end
  local key, latency = M.interval(pace, now_ms), pace.latency_ms
  if key == nil or latency == nil or latency <= key then
    return 0
  end
  return math.floor(math.min(max_ms, latency - key))
end

--- What is left of suggestion `text` after `typed` was typed at its anchor: nil when the typed text leaves
--- it (or crosses a line, or uses it up).
function M.rest_after(text, typed)
  if typed == "" then
    return text ~= "" and text or nil
  end
  if typed:find("\n", 1, true) or text:sub(1, #typed) ~= typed or #text == #typed then
    return nil
  end
  return text:sub(#typed + 1)
end

--- Where the pieces of a suggestion start (byte offsets into its text, ascending): the server splits an
--- answer where the model was unsure (`pieces` in the item's command argument, their concatenation the
--- insert text); `skip` bytes of the insert text were already typed. nil for an item without valid pieces.
function M.cuts_of(pieces, insert, skip)
  if type(pieces) ~= "table" or #pieces < 2 then
    return nil
  end
  local cuts, at = {}, 0
  for i, piece in ipairs(pieces) do
    if type(piece) ~= "string" then
      return nil
    end
    at = at + #piece
    if i < #pieces and at > skip then
      cuts[#cuts + 1] = at - skip
    end
  end
  return at == #insert and cuts or nil
end

--- `cuts` after `n` more bytes of the text were typed or accepted.
function M.shift_cuts(cuts, n)
  if not cuts then
    return nil
  end
  local out = {}
  for _, cut in ipairs(cuts) do
    if cut > n then
      out[#out + 1] = cut - n
    end
  end
  return out
end

--- What of `text` is shown: up to its first cut (the model was sure of it), never nothing.
function M.shown_part(text, cuts)
  local first = cuts and cuts[1]
  if first and first > 0 and first < #text then
    return text:sub(1, first)
  end
  return text
end

--- Whether an automatic request in flight is worth its answer after the cursor moved to (row, col):
--- the cursor moved forward on the request's line by typing (`typed`: the text between the request's
--- column and the cursor), the request is not stale, and either the key agreed with the suggestion shown
--- (the server answers it by type-through) or the request is about done (half the usual answer time
--- has passed: cancelling it now would waste more than it saves).
---@param flight {row: integer, col: integer, sent_ms: number, explicit: boolean}
function M.keep_in_flight(flight, row, col, typed, now_ms, ghost_agreed, pace, stale_ms)
  if flight.explicit or row ~= flight.row or col < flight.col or typed:find("\n", 1, true) then
    return false
  end
  local elapsed = now_ms - flight.sent_ms
  if elapsed > stale_ms then
    return false
  end
  return ghost_agreed or pace.latency_ms == nil or elapsed >= pace.latency_ms / 2
end

return M
