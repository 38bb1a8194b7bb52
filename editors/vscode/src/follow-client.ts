// The VS Code side of typing-follow (the decisions are in follow.ts): a Follower per document behind the
// inline completion provider, and tabfill/warm where the cursor rests.
import * as vscode from "vscode";
import { InlineCompletionRequest, type LanguageClient } from "vscode-languageclient/node";
import { Follower, WARM_NOTIFICATION, WarmGate, cutsOf, shownPart, type Cursor, type Suggestion } from "./follow";
import type { ExtensionSettings } from "./settings";

const TRIGGER_INLINE_SUGGEST = "editor.action.inlineSuggest.trigger";
const WARM_DELAY_MS = 300; // the cursor rests this long before tabfill/warm

/** What a suggestion carries besides its text: the server's accept command and how much of the line after
 * the cursor it replaces. */
interface Carried {
  command: vscode.Command | undefined;
  replaceAfter: number;
}

interface LspItem {
  insertText: string | { value: string };
  range?: { start: { line: number; character: number }; end: { line: number; character: number } };
  command?: vscode.Command;
}

/** A server item as a suggestion at `at` (undefined when it does not fit the text before the cursor). */
export function suggestionOf(item: LspItem, at: Cursor): Suggestion<Carried> | undefined {
  const insert = typeof item.insertText === "string" ? item.insertText : item.insertText?.value;
  if (typeof insert !== "string" || insert === "") {
    return undefined;
  }
  let text = insert;
  let replaceAfter = 0;
  let skip = 0;
  if (item.range) {
    const { start, end } = item.range;
    if (start.line !== at.line || end.line !== at.line || start.character > at.character || end.character < at.character) {
      return undefined;
    }
    const typed = at.before.slice(start.character, at.character);
    if (!insert.startsWith(typed)) {
      return undefined;
    }
    text = insert.slice(typed.length);
    replaceAfter = end.character - at.character;
    skip = typed.length;
  }
  const argument: unknown = item.command?.arguments?.[0];
  const pieces = typeof argument === "object" && argument !== null ? (argument as { pieces?: unknown }).pieces : undefined;
  const cuts = cutsOf(pieces, insert, skip);
  return text ? { line: at.line, character: at.character, text, item: { command: item.command, replaceAfter }, cuts } : undefined;
}

export class FollowClient implements vscode.Disposable {
  private readonly followers = new Map<string, Follower<Carried>>();
  private readonly gate = new WarmGate();
  private warmTimer: NodeJS.Timeout | undefined;
  private readonly disposables: vscode.Disposable[];

  constructor(
    private readonly client: LanguageClient,
    private readonly settings: () => ExtensionSettings,
    private readonly latency: (ms: number) => void,
    private readonly log: vscode.LogOutputChannel,
  ) {
    this.disposables = [
      vscode.window.onDidChangeTextEditorSelection((event) => this.warmLater(event.textEditor, WARM_DELAY_MS)),
      vscode.window.onDidChangeActiveTextEditor((editor) => editor && this.warmLater(editor, 0)),
      vscode.window.onDidChangeWindowState((state) => {
        const editor = vscode.window.activeTextEditor;
        if (state.focused && editor) {
          this.warmLater(editor, 0);
        }
      }),
      vscode.workspace.onDidCloseTextDocument((document) => this.followers.delete(document.uri.toString())),
    ];
  }

  follower(document: vscode.TextDocument): Follower<Carried> {
    const key = document.uri.toString();
    let follower = this.followers.get(key);
    if (!follower) {
      follower = new Follower<Carried>(
        {
          now: () => performance.now(),
          sleep: (ms, isCancelled) => new Promise((resolve) => {
            const timer = setTimeout(resolve, ms);
            if (isCancelled()) {
              clearTimeout(timer);
              resolve();
            }
          }),
          send: (at, explicit, abort) => this.send(document, at, explicit, abort),
        },
        () => this.settings().follow,
        (answer) => this.shownElsewhere(document, answer),
      );
      this.followers.set(key, follower);
    }
    return follower;
  }

  /** tabfill/completionReady for this document: ask the server again rather than keep what was shown. */
  invalidate(document: vscode.TextDocument): void {
    this.followers.get(document.uri.toString())?.invalidate();
  }

  async provide(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[] | null> {
    const before = document.lineAt(position.line).text.slice(0, position.character);
    const explicit = context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke;
    const cursor: Cursor = { line: position.line, character: position.character, before };
    const suggestion = await this.follower(document).provide(cursor, () => token.isCancellationRequested, explicit);
    if (!suggestion || token.isCancellationRequested) {
      return null;
    }
    // NOTE: only what the model was sure of is shown (the first piece); accepting it or typing on shows the
    // next. The item's range end and accept command belong to the whole suggestion, so to its last piece.
    const shown = shownPart(suggestion.text, suggestion.cuts);
    if (shown !== suggestion.text) {
      return [new vscode.InlineCompletionItem(shown, new vscode.Range(position, position))];
    }
    const end = new vscode.Position(position.line, position.character + suggestion.item.replaceAfter);
    return [new vscode.InlineCompletionItem(suggestion.text, new vscode.Range(position, end), suggestion.item.command)];
  }

  /** One request; VS Code's cancellation of the provider call does not cancel it (the Follower decides). */
  private async send(document: vscode.TextDocument, at: Cursor, explicit: boolean, abort: AbortSignal): Promise<Suggestion<Carried> | undefined> {
    const source = new vscode.CancellationTokenSource();
    abort.addEventListener("abort", () => source.cancel());
    const started = performance.now();
    try {
      const result = await this.client.sendRequest(
        InlineCompletionRequest.type,
        {
          textDocument: { uri: this.client.code2ProtocolConverter.asUri(document.uri) },
          position: { line: at.line, character: at.character },
          context: { triggerKind: explicit ? 1 : 2 },
        },
        source.token,
      );
      this.latency(performance.now() - started);
      const items = (Array.isArray(result) ? result : result?.items ?? []) as LspItem[];
      for (const item of items) {
        const suggestion = suggestionOf(item, at);
        if (suggestion) {
          return suggestion;
        }
      }
      return undefined;
    } catch (error) {
      if (!abort.aborted) {
        this.log.warn(`inline completion failed: ${error instanceof Error ? error.message : String(error)}`);
      }
      return undefined;
    } finally {
      source.dispose();
    }
  }

  /** An answer that landed after VS Code stopped waiting (it was kept in flight): ask VS Code to show it if
   * the cursor is still where it was asked. */
  private shownElsewhere(document: vscode.TextDocument, answer: Suggestion<Carried>): void {
    const editor = vscode.window.activeTextEditor;
    const active = editor?.selection.active;
    if (!editor || editor.document !== document || !editor.selection.isEmpty || !active) {
      return;
    }
    if (active.line === answer.line && active.character === answer.character) {
      void vscode.commands.executeCommand(TRIGGER_INLINE_SUGGEST).then(undefined, () => undefined);
    }
  }

  /** tabfill/warm once the cursor has rested for `delayMs` at a place not warmed yet. */
  private warmLater(editor: vscode.TextEditor, delayMs: number): void {
    if (this.warmTimer) {
      clearTimeout(this.warmTimer);
    }
    this.warmTimer = setTimeout(() => {
      this.warmTimer = undefined;
      if (!this.settings().warm || !this.settings().enable || !this.client.isRunning() || vscode.window.activeTextEditor !== editor) {
        return;
      }
      const { document, selection } = editor;
      if (!selection.isEmpty || !this.gate.shouldWarm(document.uri.toString(), document.version, selection.active.line, selection.active.character)) {
        return;
      }
      void this.client.sendNotification(WARM_NOTIFICATION, {
        textDocument: { uri: this.client.code2ProtocolConverter.asUri(document.uri) },
        position: { line: selection.active.line, character: selection.active.character },
      }).catch(() => undefined);
    }, delayMs);
  }

  dispose(): void {
    if (this.warmTimer) {
      clearTimeout(this.warmTimer);
    }
    for (const disposable of this.disposables.splice(0)) {
      disposable.dispose();
    }
    this.followers.clear();
  }
}
