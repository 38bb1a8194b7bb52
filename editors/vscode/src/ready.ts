// Pure logic (no `vscode` import): whether a `tabfill/completionReady` notification should make VS Code
// ask for inline completions again.
//
// The server answers a completion within its deadline with what it has, finishes the answer in the
// background and then sends this notification (only if the document is still at the request's version).
// `finished: true`: asking again at that position is answered from the server's result cache with the
// whole answer. `finished: false` (with a `reason`): the background generation stopped before the end
// (time cap, preempted, superseded); the next request there resumes it, so asking again at once would only
// restart the same capped work: nothing to do.

export const COMPLETION_READY = "tabfill/completionReady";

/** A position as both sides see it after conversion: line and UTF-16 character (VS Code's unit). */
export interface Place {
  line: number;
  character: number;
}

/** The notification's params, checked. */
export interface CompletionReady {
  uri: string;
  version: number;
  position: Place;
  finished: boolean; // true when the server does not say (servers before the field)
  reason?: string; // why not finished
}

/** What matters of the active editor: its document (uri as sent to the server) and its primary selection. */
export interface ActiveEditor {
  uri: string;
  version: number;
  selection: { anchor: Place; active: Place };
}

export type Decision = "trigger" | "not finished" | "no editor" | "other document" | "other version" | "selection" | "cursor moved";

function isPlace(value: unknown): value is Place {
  const place = value as Place | null;
  return (
    typeof place === "object" && place !== null && Number.isInteger(place.line) && Number.isInteger(place.character)
  );
}

/** The params of a `tabfill/completionReady` notification; undefined when they are not of that shape. */
export function parseCompletionReady(params: unknown): CompletionReady | undefined {
  const value = params as {
    textDocument?: { uri?: unknown; version?: unknown };
    position?: unknown;
    finished?: unknown;
    reason?: unknown;
  } | null;
  if (typeof value !== "object" || value === null || typeof value.textDocument !== "object" || value.textDocument === null) {
    return undefined;
  }
  const { uri, version } = value.textDocument;
  if (typeof uri !== "string" || typeof version !== "number" || !Number.isInteger(version) || !isPlace(value.position)) {
    return undefined;
  }
  const ready: CompletionReady = {
    uri,
    version,
    position: { line: value.position.line, character: value.position.character },
    finished: value.finished !== false,
  };
  if (typeof value.reason === "string") {
    ready.reason = value.reason;
  }
  return ready;
}

function samePlace(a: Place, b: Place): boolean {
  return a.line === b.line && a.character === b.character;
}

/** "trigger" when the answer is whole and the active editor is still where it was asked: same document and version,
 * an empty selection (a plain cursor) at the notified position; otherwise why not. */
export function decide(ready: CompletionReady, editor: ActiveEditor | undefined): Decision {
  if (!ready.finished) {
    return "not finished";
  }
  if (!editor) {
    return "no editor";
  }
  if (editor.uri !== ready.uri) {
    return "other document";
  }
  if (editor.version !== ready.version) {
    return "other version";
  }
  if (!samePlace(editor.selection.anchor, editor.selection.active)) {
    return "selection";
  }
  if (!samePlace(editor.selection.active, ready.position)) {
    return "cursor moved";
  }
  return "trigger";
}
