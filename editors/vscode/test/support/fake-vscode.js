// A small stand-in for the `vscode` module: enough of the API for vscode-languageclient and this
// extension to start a real `tabfill serve`, open a document and ask for inline completions.
// Used by test/support/drive-extension.js (run from tests/editors/test_vscode.py).
"use strict";

class Disposable {
  constructor(fn) { this._fn = fn; }
  static from(...items) { return new Disposable(() => items.forEach((item) => item && item.dispose && item.dispose())); }
  dispose() { if (this._fn) { this._fn(); this._fn = undefined; } }
}

class EventEmitter {
  constructor() {
    this.listeners = new Set();
    this.event = (listener, thisArg, disposables) => {
      const bound = thisArg ? listener.bind(thisArg) : listener;
      this.listeners.add(bound);
      const disposable = new Disposable(() => this.listeners.delete(bound));
      if (Array.isArray(disposables)) disposables.push(disposable);
      return disposable;
    };
  }
  fire(value) { for (const listener of [...this.listeners]) listener(value); }
  dispose() { this.listeners.clear(); }
}

class Uri {
  constructor(scheme, path) { this.scheme = scheme; this.path = path; this.fsPath = path; this.authority = ""; this.query = ""; this.fragment = ""; }
  static file(path) { return new Uri("file", path); }
  static parse(value) { const match = /^([a-z]+):\/\/(.*)$/.exec(value); return match ? new Uri(match[1], match[2]) : new Uri("file", value); }
  toString() { return `${this.scheme}://${this.path}`; }
  with() { return this; }
  toJSON() { return this.toString(); }
}

class Position {
  constructor(line, character) { this.line = line; this.character = character; }
}

class Range {
  constructor(a, b, c, d) {
    if (typeof a === "number") { this.start = new Position(a, b); this.end = new Position(c, d); }
    else { this.start = a; this.end = b; }
  }
}

class InlineCompletionItem {
  constructor(insertText, range, command) { this.insertText = insertText; this.range = range; this.command = command; }
}
class InlineCompletionList { constructor(items) { this.items = items; } }

class CancellationTokenSource {
  constructor() {
    const emitter = new EventEmitter();
    this._emitter = emitter;
    this.token = { isCancellationRequested: false, onCancellationRequested: emitter.event };
  }
  cancel() { if (!this.token.isCancellationRequested) { this.token.isCancellationRequested = true; this._emitter.fire(undefined); } }
  dispose() {}
}

class ThemeColor { constructor(id) { this.id = id; } }

function textDocument(uri, languageId, text) {
  const lines = text.split("\n");
  const offsetAt = (position) => lines.slice(0, position.line).reduce((n, line) => n + line.length + 1, 0) + position.character;
  return {
    uri, languageId, version: 1, isClosed: false, isDirty: false, isUntitled: false, fileName: uri.fsPath, eol: 1, lineCount: lines.length,
    getText: () => text,
    offsetAt,
    positionAt: (offset) => {
      let line = 0;
      while (line < lines.length - 1 && offset > lines[line].length) { offset -= lines[line].length + 1; line += 1; }
      return new Position(line, offset);
    },
    lineAt: (line) => ({ text: lines[typeof line === "number" ? line : line.line] }),
    save: async () => true,
  };
}

const configuration = {}; // "section.key" -> value
const configurationEmitter = new EventEmitter();
const openEmitter = new EventEmitter();
const events = new Map();
const record = { statusBarItems: [], commands: new Map(), inlineProviders: [], messages: [], log: [], executed: [] };

function event(name) {
  if (!events.has(name)) events.set(name, new EventEmitter());
  return events.get(name).event;
}

const logChannel = (name) => {
  const channel = { name, logLevel: 2, onDidChangeLogLevel: event(`log:${name}`), show() {}, hide() {}, clear() {}, replace() {}, dispose() {} };
  for (const level of ["trace", "debug", "info", "warn", "error", "append", "appendLine"]) {
    channel[level] = (message) => record.log.push(`[${level}] ${message}`);
  }
  return channel;
};

const workspace = {
  textDocuments: [],
  workspaceFolders: undefined,
  notebookDocuments: [],
  getConfiguration: (section) => ({
    get: (key, fallback) => {
      const full = section ? `${section}.${key}` : key;
      return full in configuration ? configuration[full] : fallback;
    },
    has: (key) => `${section}.${key}` in configuration,
    // user settings: "section.key"; a workspace's (.vscode/settings.json): "workspace:section.key"
    inspect: (key) => {
      const full = section ? `${section}.${key}` : key;
      return { key: full, globalValue: configuration[full], workspaceValue: configuration[`workspace:${full}`] };
    },
    update: async (key, value) => {
      configuration[`${section}.${key}`] = value;
      configurationEmitter.fire({ affectsConfiguration: (name) => `${section}.${key}`.startsWith(name) });
    },
  }),
  onDidChangeConfiguration: configurationEmitter.event,
  onDidOpenTextDocument: openEmitter.event,
  applyEdit: async () => true,
};
const window = {
  activeTextEditor: undefined,
  visibleTextEditors: [],
  tabGroups: { all: [], onDidChangeTabs: event("tabs"), onDidChangeTabGroups: event("tabGroups") },
  createStatusBarItem: () => {
    const item = { text: "", tooltip: "", command: undefined, show() {}, hide() {}, dispose() {} };
    record.statusBarItems.push(item);
    return item;
  },
  createOutputChannel: (name) => logChannel(name),
  showErrorMessage: async (message) => { record.messages.push(["error", message]); return undefined; },
  showWarningMessage: async (message) => { record.messages.push(["warning", message]); return undefined; },
  showInformationMessage: async (message) => { record.messages.push(["info", message]); return undefined; },
  showTextDocument: async () => undefined,
  withProgress: async (_options, task) => task({ report() {} }, new CancellationTokenSource().token),
};
const languages = {
  match: (selector, document) => {
    const selectors = Array.isArray(selector) ? selector : [selector];
    return selectors.some((s) => (typeof s === "string" ? s === document.languageId : (!s.scheme || s.scheme === document.uri.scheme) && (!s.language || s.language === document.languageId))) ? 10 : 0;
  },
  registerInlineCompletionItemProvider: (selector, provider) => {
    record.inlineProviders.push(provider);
    return new Disposable(() => record.inlineProviders.splice(record.inlineProviders.indexOf(provider), 1));
  },
  createDiagnosticCollection: () => ({ set() {}, delete() {}, clear() {}, dispose() {}, forEach() {}, get() { return []; }, has() { return false; } }),
};
const commands = {
  registerCommand: (id, handler) => {
    if (record.commands.has(id)) throw new Error(`command '${id}' already exists`);
    record.commands.set(id, handler);
    return new Disposable(() => record.commands.delete(id));
  },
  executeCommand: async (id, ...args) => {
    record.executed.push(id);
    const handler = record.commands.get(id);
    if (!handler) throw new Error(`command '${id}' not found`);
    return handler(...args);
  },
};

const known = {
  Disposable, EventEmitter, Uri, Position, Range, InlineCompletionItem, InlineCompletionList, CancellationTokenSource, ThemeColor,
  StatusBarAlignment: { Left: 1, Right: 2 },
  ConfigurationTarget: { Global: 1, Workspace: 2, WorkspaceFolder: 3 },
  InlineCompletionTriggerKind: { Invoke: 0, Automatic: 1 },
  LogLevel: { Off: 0, Trace: 1, Debug: 2, Info: 3, Warning: 4, Error: 5 },
  workspace, window, languages, commands,
  env: { language: "en", appName: "fake-vscode", machineId: "0", sessionId: "0", openExternal: async () => true },
  version: "1.91.0",
  extensions: { all: [], getExtension: () => undefined, onDidChange: event("extensions") },
  __esModule: true,
  _test: { record, configuration, openEmitter, textDocument },
};

// Anything else: namespaces answer events and registrations with disposables, classes are empty.
function fallbackNamespace(name) {
  return new Proxy({}, {
    get: (target, key) => {
      if (typeof key !== "string") return undefined;
      if (key.startsWith("on")) return event(`${name}.${key}`);
      return () => new Disposable();
    },
  });
}
for (const name of ["workspace", "window", "languages"]) {
  const real = known[name];
  known[name] = new Proxy(real, { get: (target, key) => (key in target ? target[key] : fallbackNamespace(name)[key]) });
}
const classes = {};
module.exports = new Proxy(known, {
  get: (target, key) => {
    if (key in target) return target[key];
    if (typeof key !== "string") return undefined;
    if (!(key in classes)) classes[key] = /^[A-Z]/.test(key) ? class {} : fallbackNamespace(key);
    return classes[key];
  },
});
