// Pure logic (no `vscode` import): Copilot-style acceptance signals for the items the server issued.

export const DID_SHOW = "textDocument/didShowCompletion";
export const DID_PARTIALLY_ACCEPT = "textDocument/didPartiallyAcceptCompletion";
export const ACCEPT_COMMAND = "tabfill.accept";

/** The parts of an LSP InlineCompletionItem the server reads back. */
export interface ItemJson {
  insertText: string;
  command?: { title: string; command: string; arguments?: unknown[] };
}

/** What an editor-side item looks like here: its text and the command the server put on it. */
export interface ItemLike {
  insertText: string | { value: string };
  command?: { title?: string; command: string; arguments?: unknown[] };
}

export function itemId(item: ItemLike): string | undefined {
  const first = item.command?.command === ACCEPT_COMMAND ? item.command.arguments?.[0] : undefined;
  if (first && typeof first === "object" && typeof (first as { id?: unknown }).id === "string") {
    return (first as { id: string }).id;
  }
  return undefined;
}

export function toJson(item: ItemLike): ItemJson {
  const insertText = typeof item.insertText === "string" ? item.insertText : item.insertText.value;
  const json: ItemJson = { insertText };
  if (item.command) {
    json.command = { title: item.command.title ?? "", command: item.command.command, arguments: item.command.arguments };
  }
  return json;
}

/** Turns the editor's events into notifications: one show per item, growing partial accepts only. */
export class Signals {
  private readonly shown = new Set<string>();
  private readonly accepted = new Map<string, number>();

  constructor(private readonly send: (method: string, params: unknown) => void, private readonly limit = 512) {}

  didShow(item: ItemLike): void {
    const id = itemId(item);
    if (id === undefined || this.shown.has(id)) {
      return;
    }
    this.remember(this.shown, id);
    this.send(DID_SHOW, { item: toJson(item) });
  }

  /** `acceptedLength`: characters of the item accepted so far (VS Code passes a number or {acceptedLength}). */
  didPartiallyAccept(item: ItemLike, info: number | { acceptedLength: number }): void {
    const id = itemId(item);
    const acceptedLength = typeof info === "number" ? info : info?.acceptedLength;
    if (id === undefined || typeof acceptedLength !== "number" || !(acceptedLength > 0)) {
      return;
    }
    if ((this.accepted.get(id) ?? 0) >= acceptedLength) {
      return;
    }
    this.didShow(item);
    this.accepted.set(id, acceptedLength);
    if (this.accepted.size > this.limit) {
      this.accepted.delete(this.accepted.keys().next().value as string);
    }
    this.send(DID_PARTIALLY_ACCEPT, { item: toJson(item), acceptedLength });
  }

  private remember(set: Set<string>, id: string): void {
    set.add(id);
    if (set.size > this.limit) {
      set.delete(set.values().next().value as string);
    }
  }
}
