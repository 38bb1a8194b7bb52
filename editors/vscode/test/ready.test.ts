import assert from "node:assert/strict";
import { test } from "node:test";
import { decide, parseCompletionReady, type ActiveEditor, type CompletionReady } from "../src/ready";

const uri = "file:///home/me/project/sample.py";
const ready: CompletionReady = { uri, version: 7, position: { line: 5, character: 15 }, finished: true };

function editor(overrides: Partial<ActiveEditor> = {}): ActiveEditor {
  const cursor = { line: 5, character: 15 };
  return { uri, version: 7, selection: { anchor: cursor, active: cursor }, ...overrides };
}

test("the same document, version and an empty cursor at the position: trigger", () => {
  assert.equal(decide(ready, editor()), "trigger");
});

test("a generation that stopped before its end (finished: false): nothing, wherever the cursor is", () => {
  assert.equal(decide({ ...ready, finished: false, reason: "timeLimit" }, editor()), "not finished");
});

test("the document changed since (another version): nothing", () => {
  assert.equal(decide(ready, editor({ version: 8 })), "other version");
  assert.equal(decide(ready, editor({ version: 6 })), "other version");
});

test("another document is active, or none: nothing", () => {
  assert.equal(decide(ready, editor({ uri: "file:///home/me/project/other.py" })), "other document");
  assert.equal(decide(ready, undefined), "no editor");
});

test("the cursor moved (same line or another line): nothing", () => {
  const moved = (line: number, character: number) => editor({ selection: { anchor: { line, character }, active: { line, character } } });
  assert.equal(decide(ready, moved(5, 14)), "cursor moved");
  assert.equal(decide(ready, moved(4, 15)), "cursor moved");
});

test("a selection that is not empty: nothing, even when it ends at the position", () => {
  const selection = { anchor: { line: 5, character: 10 }, active: { line: 5, character: 15 } };
  assert.equal(decide(ready, editor({ selection })), "selection");
  const reversed = { anchor: { line: 5, character: 15 }, active: { line: 5, character: 10 } };
  assert.equal(decide(ready, editor({ selection: reversed })), "selection");
});

test("params from the server are checked before use", () => {
  const params = { textDocument: { uri, version: 7 }, position: { line: 5, character: 15 } };
  assert.deepEqual(parseCompletionReady(params), ready); // no `finished` (an older server): whole
  assert.deepEqual(parseCompletionReady({ ...params, finished: true }), ready);
  assert.deepEqual(parseCompletionReady({ ...params, finished: false, reason: "timeLimit" }), {
    ...ready,
    finished: false,
    reason: "timeLimit",
  });
  assert.equal(parseCompletionReady(null), undefined);
  assert.equal(parseCompletionReady({ textDocument: { uri }, position: { line: 5, character: 15 } }), undefined);
  assert.equal(parseCompletionReady({ textDocument: { uri, version: "7" }, position: { line: 5, character: 15 } }), undefined);
  assert.equal(parseCompletionReady({ textDocument: { uri, version: 7 }, position: { line: 5 } }), undefined);
  assert.equal(parseCompletionReady({ textDocument: { uri, version: 7 }, position: { line: 5, character: 1.5 } }), undefined);
});
