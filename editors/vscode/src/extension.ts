// The VS Code side: starts `tabfill serve`, asks for inline completions, shows the status bar item.
import * as vscode from "vscode";
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  InlineCompletionRequest,
  LanguageClient,
  State,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
  type DynamicFeature,
  type LanguageClientOptions,
  type ServerOptions,
  type StaticFeature,
} from "vscode-languageclient/node";
import { FollowClient } from "./follow-client";
import { COMPLETION_READY, decide, parseCompletionReady } from "./ready";
import { Restarts, type RestartDecision } from "./restart";
import { configurationParams, needsRestart, readSettings, userValue, type ExtensionSettings } from "./settings";
import { Signals } from "./signals";
import { StatusModel, type ServerStatus } from "./status";

const STATUS_METHOD = "tabfill/status";
const STATUS_POLL_MS = 1000;
const TRIGGER_INLINE_SUGGEST = "editor.action.inlineSuggest.trigger";

/**
 * A LanguageClient without the library's own inline completion provider: ours (below) is the same
 * request and conversion, plus the editor's show / partial-accept events, timing and the on/off switch.
 * NOTE: the library's provider object is created and registered in one step, so the proposed
 * `handleDidShowCompletionItem` hooks cannot be added to it.
 */
class TabfillClient extends LanguageClient {
  quiet: () => boolean = () => false; // while restarting after a crash: errors go to the log only

  error(message: string, data?: unknown, showNotification: boolean | "force" = true): void {
    super.error(message, data, this.quiet() ? false : showNotification);
  }

  registerFeature(feature: StaticFeature | DynamicFeature<unknown>): void {
    const method = (feature as { registrationType?: { method?: string } }).registrationType?.method;
    if (method === InlineCompletionRequest.method) {
      return;
    }
    super.registerFeature(feature);
  }
}

/** Stable API: provideInlineCompletionItems. The two handle* hooks are VS Code's proposed
 * `inlineCompletionsAdditions` API: VS Code calls them only where that proposal is enabled for
 * this extension; elsewhere only the accept command (run by VS Code on accept) is reported. */
class InlineProvider implements vscode.InlineCompletionItemProvider {
  constructor(
    private readonly client: LanguageClient,
    private readonly extension: Extension,
  ) {}

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[] | vscode.InlineCompletionList | null | undefined> {
    if (!this.extension.settings.enable || !this.client.isRunning()) {
      return null;
    }
    // NOTE: kept suggestions, one request in flight per document, the adaptive debounce: follow-client.ts
    return this.extension.follow.provide(document, position, context, token);
  }

  handleDidShowCompletionItem(item: vscode.InlineCompletionItem): void {
    this.extension.signals.didShow(item);
  }

  handleDidPartiallyAcceptCompletionItem(item: vscode.InlineCompletionItem, info: number | { acceptedLength: number }): void {
    this.extension.signals.didPartiallyAccept(item, info);
  }
}

class Extension implements vscode.Disposable {
  settings: ExtensionSettings;
  readonly status = new StatusModel();
  readonly signals: Signals;
  private client: TabfillClient | undefined;
  private readonly item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  private readonly log = vscode.window.createOutputChannel("tabfill", { log: true });
  private readonly disposables: vscode.Disposable[] = [];
  private poll: NodeJS.Timeout | undefined;
  follow!: FollowClient;
  private readonly inFlight = new Set<Promise<void>>(); // signals not yet written
  private readonly restarts = new Restarts();
  private restartTimer: NodeJS.Timeout | undefined;
  private resumeWhenReady = false; // after a crash: ask for the suggestion again once the model is loaded

  constructor() {
    this.settings = this.read();
    this.signals = new Signals((method, params) => {
      if (this.client?.isRunning()) {
        const sent: Promise<void> = this.client.sendNotification(method, params).catch((error: unknown) => {
          this.log.warn(`${method} not sent: ${error instanceof Error ? error.message : String(error)}`);
        });
        this.inFlight.add(sent);
        void sent.finally(() => this.inFlight.delete(sent));
      }
    });
    this.item.name = "tabfill";
    this.item.show();
    this.status.setEnabled(this.settings.enable);
    this.render();
  }

  private read(): ExtensionSettings {
    const config = vscode.workspace.getConfiguration("tabfill");
    const settings = readSettings((key) => userValue(key, config.inspect(key)));
    for (const problem of settings.problems) {
      void vscode.window.showWarningMessage(`tabfill: ${problem}`);
    }
    return settings;
  }

  render(): void {
    const view = this.status.view();
    this.item.text = view.text;
    this.item.tooltip = view.tooltip;
    this.item.command = view.kind === "error" ? "tabfill.showLog" : "tabfill.toggle";
    this.item.backgroundColor = view.kind === "error" ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  }

  async start(): Promise<void> {
    const { command, args } = this.settings.server;
    const serverOptions: ServerOptions = { command, args, options: { env: { ...process.env } } };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      initializationOptions: { tabfill: this.settings.serverSettings },
      outputChannel: this.log,
      initializationFailedHandler: (error) => {
        if (!this.restarts.restarting) {
          this.status.fail(`the server did not start: ${error instanceof Error ? error.message : String(error)}`);
          this.render();
        }
        return false;
      },
      // NOTE: a server that stops on its own is restarted here (crashed), with backoff and one message per
      // outage; the library's own restart has no backoff and says so on every crash.
      errorHandler: {
        error: (_error, _message, count) => ({ action: count !== undefined && count <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown, handled: true }),
        closed: () => ({ action: CloseAction.DoNotRestart, handled: true, message: "the connection to the server closed" }),
      },
    };
    const client = new TabfillClient("tabfill", "tabfill", serverOptions, clientOptions);
    client.quiet = () => this.restarts.restarting;
    this.client = client;
    this.follow = new FollowClient(client, () => this.settings, (ms) => {
      this.status.latency(ms);
      this.render();
    }, this.log);
    this.disposables.push(
      this.follow,
      client.onDidChangeState((event) => {
        if (this.client !== client) {
          return; // stopped on purpose (restart, settings, deactivate): this.client was cleared first
        }
        if (event.newState === State.Running) {
          this.restarts.running(Date.now());
        } else if (event.newState === State.Stopped && event.oldState === State.Running) {
          this.crashed("the server stopped");
        }
      }),
      vscode.languages.registerInlineCompletionItemProvider(
        [{ scheme: "file" }, { scheme: "untitled" }],
        new InlineProvider(client, this),
      ),
    );
    this.status.progress("begin", `starting ${command}`);
    this.render();
    try {
      await client.start();
    } catch (error) {
      const reason = `could not start \`${command} ${args.join(" ")}\`: ${error instanceof Error ? error.message : String(error)}`;
      if (this.restarts.restarting && this.client === client) {
        this.crashed(reason);
      } else {
        this.status.fail(reason);
        this.render();
      }
      return;
    }
    // A deadline-cut answer is whole now (in the server's cache): ask again if nothing moved since.
    this.disposables.push(client.onNotification(COMPLETION_READY, (params: unknown) => this.completionReady(client, params)));
    // Model loading reports $/progress: show it here instead of a notification.
    client.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
      const subscription = client.onProgress(WorkDoneProgress.type, token, (value) => {
        this.status.progress(value.kind, value.message, "percentage" in value ? value.percentage : undefined);
        this.render();
        if (value.kind === "end") {
          subscription.dispose();
          void this.refresh();
        }
      });
    });
    this.startPolling();
  }

  /** `tabfill/completionReady`: re-run VS Code's inline suggestion request when the active editor is still
   * at the notified document version with an empty cursor at the notified position. */
  private completionReady(client: LanguageClient, params: unknown): void {
    const ready = parseCompletionReady(params);
    if (!ready || !this.settings.enable || this.client !== client) {
      return;
    }
    const editor = vscode.window.activeTextEditor;
    const position = client.protocol2CodeConverter.asPosition(ready.position);
    const decision = decide(
      { ...ready, position: { line: position.line, character: position.character } },
      editor && {
        uri: client.code2ProtocolConverter.asUri(editor.document.uri),
        version: editor.document.version,
        selection: { anchor: editor.selection.anchor, active: editor.selection.active },
      },
    );
    if (decision === "trigger" && editor) {
      this.askAgain();
    } else {
      this.log.debug(`${COMPLETION_READY} ignored: ${decision}`);
    }
  }

  /** Ask the server for its state until the model is ready (or failed). */
  private startPolling(): void {
    this.stopPolling();
    this.poll = setInterval(() => void this.refresh(), STATUS_POLL_MS);
    void this.refresh();
  }

  private stopPolling(): void {
    if (this.poll) {
      clearInterval(this.poll);
      this.poll = undefined;
    }
  }

  async refresh(): Promise<void> {
    const client = this.client;
    if (!client?.isRunning()) {
      return;
    }
    try {
      const status = (await client.sendRequest(STATUS_METHOD, null)) as ServerStatus;
      this.status.status(status);
      if (status.state === "ready" || status.state === "failed") {
        this.stopPolling();
      }
      if (status.state === "ready" && this.resumeWhenReady) {
        this.resumeWhenReady = false;
        this.askAgain(); // the suggestion the crash took away, without waiting for a key
      }
    } catch (error) {
      this.log.warn(`tabfill/status failed: ${error instanceof Error ? error.message : String(error)}`);
    }
    this.render();
  }

  async onConfigurationChanged(): Promise<void> {
    const before = this.settings;
    this.settings = this.read();
    this.status.setEnabled(this.settings.enable);
    this.render();
    if (needsRestart(before.server, this.settings.server)) {
      await this.restart();
      return;
    }
    if (this.client?.isRunning() && JSON.stringify(before.serverSettings) !== JSON.stringify(this.settings.serverSettings)) {
      await this.client.sendNotification(DidChangeConfigurationNotification.type, configurationParams(this.settings.serverSettings));
      this.startPolling(); // a new model loads
    }
  }

  /** The user's `tabfill: Restart server`, or a changed server command: a new server, the outage forgotten. */
  async restart(): Promise<void> {
    this.restarts.reset();
    await this.relaunch();
  }

  private async relaunch(): Promise<void> {
    this.stopPolling();
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
      this.restartTimer = undefined;
    }
    const client = this.client;
    this.client = undefined;
    if (client) {
      await client.stop().catch(() => undefined);
    }
    for (const disposable of this.disposables.splice(0)) {
      disposable.dispose();
    }
    await this.start(); // NOTE: a new client sends didOpen with the current text of every open document
  }

  /** The server stopped without being asked to, or a restart failed: restart it with backoff; say so once. */
  private crashed(reason: string): void {
    const decision: RestartDecision = this.restarts.crashed(Date.now());
    this.stopPolling();
    if (decision.action === "give up") {
      const message = `the server stopped ${decision.attempts + 1} times in a row (last: ${reason}); not restarting it. Fix the cause (see the log), then run "tabfill: Restart server".`;
      this.log.error(message);
      this.status.fail(message);
      this.render();
      if (decision.announce) {
        void vscode.window.showErrorMessage(`tabfill: ${message}`);
      }
      return;
    }
    this.log.warn(`${reason}; restart ${decision.attempt} of ${this.restarts.maxTries} in ${decision.delayMs} ms`);
    if (decision.announce) {
      void vscode.window.showWarningMessage(`tabfill: ${reason} (see the log); restarting it. Open documents are sent to the new server.`);
    }
    this.status.progress("begin", `restarting the server (${decision.attempt} of ${this.restarts.maxTries})`);
    this.render();
    this.resumeWhenReady = true;
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
    }
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      void this.relaunch();
    }, decision.delayMs);
  }

  /** Run VS Code's inline suggestion request at the cursor of the active editor. */
  private askAgain(): void {
    const editor = vscode.window.activeTextEditor;
    if (!editor || !this.settings.enable) {
      return;
    }
    this.follow.invalidate(editor.document);
    void vscode.commands.executeCommand(TRIGGER_INLINE_SUGGEST).then(undefined, (error: unknown) => {
      this.log.warn(`${TRIGGER_INLINE_SUGGEST} failed: ${error instanceof Error ? error.message : String(error)}`);
    });
  }

  async toggle(): Promise<void> {
    const config = vscode.workspace.getConfiguration("tabfill");
    await config.update("enable", !this.settings.enable, vscode.ConfigurationTarget.Global);
  }

  showLog(): void {
    this.log.show(true);
  }

  dispose(): void {
    this.stopPolling();
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
    }
    for (const disposable of this.disposables.splice(0)) {
      disposable.dispose();
    }
    this.item.dispose();
    this.log.dispose();
  }

  async stop(): Promise<void> {
    this.stopPolling();
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
      this.restartTimer = undefined;
    }
    await Promise.all(this.inFlight); // NOTE: stopping first would drop them
    const client = this.client;
    this.client = undefined; // stopping on purpose: not a crash
    await client?.stop().catch(() => undefined);
  }
}

let extension: Extension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const current = new Extension();
  extension = current;
  context.subscriptions.push(
    current,
    vscode.commands.registerCommand("tabfill.toggle", () => current.toggle()),
    vscode.commands.registerCommand("tabfill.showLog", () => current.showLog()),
    vscode.commands.registerCommand("tabfill.restart", () => current.restart()),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration("tabfill")) {
        void current.onConfigurationChanged();
      }
    }),
  );
  await current.start();
}

export async function deactivate(): Promise<void> {
  await extension?.stop();
  extension = undefined;
}
