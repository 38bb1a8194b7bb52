// Runs the built extension inside test/support/fake-vscode.js against a real server command and
// prints what a user would see, as JSON. Usage:
//   node drive-extension.js <out/src/extension.js> '<server command as a JSON list>' <file> <line> <character> [ready]
// With `ready`: tabfill.deadlineMs = 1 and the file in the active editor, cursor at <line> <character>;
// prints the first (deadline-cut) answer and what VS Code's inline-suggest trigger asked for afterwards.
// With `restart [N]`: after the first answer, N times (default 2): kill -9 the server while a request is in
// flight and wait until a suggestion is on screen again without a keystroke (the extension restarts the
// server and runs the inline-suggest trigger once the model is loaded); prints each recovery's time.
// With `pieces`: tabfill.confidencePercent left at its default (else 0), so the provider shows the first piece.
"use strict";
const Module = require("module");
const path = require("path");
const fs = require("fs");
const fake = require("./fake-vscode");
const original = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  return request === "vscode" ? "vscode" : original.call(this, request, ...rest);
};
require.cache["vscode"] = { id: "vscode", filename: "vscode", loaded: true, exports: fake };

const [entry, serverJson, file, line, character, mode, modeArgument] = process.argv.slice(2);
const server = JSON.parse(serverJson);
const { record, configuration, openEmitter, textDocument } = fake._test;
configuration["tabfill.server.path"] = server[0];
configuration["tabfill.server.args"] = server.slice(1);
configuration["tabfill.deadlineMs"] = mode === "ready" ? 1 : 60000;
// the tiny random model is unsure of every token: whole suggestions, except in mode `pieces` (the default bar)
if (mode !== "pieces") configuration["tabfill.confidencePercent"] = 0;
// a workspace's settings (a cloned repository's .vscode/settings.json): ignored for the server command and model
configuration["workspace:tabfill.server.path"] = "/nonexistent/evil-tabfill";
configuration["workspace:tabfill.model"] = "/nonexistent/evil-model";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** The server: this process's one child (Linux). */
function serverPid() {
  const children = [];
  for (const task of fs.readdirSync("/proc/self/task")) {
    children.push(...fs.readFileSync(`/proc/self/task/${task}/children`, "utf8").split(" ").filter(Boolean).map(Number));
  }
  return children.length === 1 ? children[0] : undefined;
}
async function until(what, probe, timeoutMs = 600000) { // an upper bound for slow machines
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; log:\n${record.log.join("\n")}`);
    await sleep(20);
  }
}

(async () => {
  const extension = require(path.resolve(entry));
  const context = { subscriptions: [] };
  await extension.activate(context);
  const status = record.statusBarItems[0];
  const seen = new Set([status.text]);
  const timer = setInterval(() => seen.add(status.text), 5);
  await until("the model to load", () => status.text.startsWith("$(check)") || status.text.startsWith("$(error)"));
  const readyText = status.text;
  const readyTooltip = status.tooltip;
  if (readyText.startsWith("$(error)")) {
    const statusCommand = status.command;
    await extension.deactivate();
    console.log(JSON.stringify({ readyText, readyTooltip, statusCommand, seen: [...seen], messages: record.messages }));
    process.exit(0);
  }

  const text = fs.readFileSync(file, "utf8");
  const document = textDocument(fake.Uri.file(path.resolve(file)), "python", text);
  fake.workspace.textDocuments.push(document);
  openEmitter.fire(document);
  const provider = await until("the inline completion provider", () => record.inlineProviders[0]);
  const token = new fake.CancellationTokenSource().token;
  const position = new fake.Position(Number(line), Number(character));
  const describe = (list) => list.map((i) => ({ insertText: i.insertText, command: i.command && i.command.command, arguments: i.command && i.command.arguments }));
  const retriggered = [];
  if (mode === "ready" || mode === "restart") {
    // VS Code's side of the trigger command: ask the provider again at the cursor, as the editor does.
    fake.commands.registerCommand("editor.action.inlineSuggest.trigger", async () => {
      const current = record.inlineProviders[0]; // a restarted server comes with a new provider
      const again = current ? await current.provideInlineCompletionItems(document, fake.window.activeTextEditor.selection.active, { triggerKind: 0 }, token) : null;
      retriggered.push(describe((again && (again.items || again)) || []));
      seen.add(status.text);
    });
    fake.window.activeTextEditor = { document, selection: { anchor: position, active: position, isEmpty: true }, selections: [] };
  }
  const result = await provider.provideInlineCompletionItems(document, position, { triggerKind: 1, selectedCompletionInfo: undefined }, token);
  const items = (result && (result.items || result)) || [];
  const item = items[0];
  const afterText = status.text;

  if (mode === "pieces") {
    clearInterval(timer);
    await extension.deactivate();
    console.log(JSON.stringify({ items: describe(items) }));
    process.exit(0);
  }

  if (mode === "restart") {
    const recoveries = [];
    for (let round = 0; round < Number(modeArgument || 2); round += 1) {
      const pid = await until("the server process", serverPid, 30000);
      const inFlight = record.inlineProviders[0].provideInlineCompletionItems(document, new fake.Position(0, 0), { triggerKind: 1 }, token);
      const killed = performance.now();
      process.kill(pid, "SIGKILL");
      const lost = await inFlight;
      const before = retriggered.length;
      const again = await until("a suggestion on screen again", () => retriggered.slice(before).find((list) => list.length > 0 && list[0].insertText));
      const ms = performance.now() - killed;
      recoveries.push({ ms: Math.round(ms), pid, newPid: serverPid(), lost: describe((lost && (lost.items || lost)) || []), again: describe(again), statusText: status.text });
    }
    clearInterval(timer);
    await extension.deactivate();
    console.log(JSON.stringify({
      first: describe(items), recoveries, seen: [...seen], messages: record.messages,
      log: record.log.filter((entry) => /restart|stopped|closed/i.test(entry)),
    }));
    process.exit(0);
  }

  if (mode === "ready") {
    await until("the inline-suggest trigger after tabfill/completionReady", () => retriggered.length > 0, 30000);
    await sleep(200); // no second trigger
    await extension.deactivate();
    console.log(JSON.stringify({ first: describe(items), retriggered, executed: record.executed, messages: record.messages }));
    process.exit(0);
  }

  // what VS Code does on accept: run the item's command (registered by the client for the server)
  let accepted = null;
  if (item && item.command) {
    accepted = await fake.commands.executeCommand(item.command.command, ...(item.command.arguments || []));
  }
  // the proposed-API hooks, as VS Code calls them where that API is enabled
  if (item) {
    provider.handleDidShowCompletionItem(item, item.insertText);
    provider.handleDidPartiallyAcceptCompletionItem(item, { kind: 0, acceptedLength: 3 });
  }
  // a changed server setting goes out as workspace/didChangeConfiguration (this value is refused: a warning)
  await fake.workspace.getConfiguration("tabfill").update("maxNewTokens", 0);
  await until("the server's warning", () => record.messages.find(([, message]) => /maxNewTokens/.test(message)));
  // toggle off: no more completions, status says so
  await fake.commands.executeCommand("tabfill.toggle");
  const disabled = await provider.provideInlineCompletionItems(document, position, { triggerKind: 1 }, token);
  const disabledText = status.text;
  clearInterval(timer);
  await extension.deactivate();
  for (const disposable of context.subscriptions) disposable.dispose();
  console.log(JSON.stringify({
    readyText, readyTooltip, afterText, disabledText, seen: [...seen], accepted,
    items: describe(items),
    disabled, messages: record.messages, commands: [...record.commands.keys()],
  }));
  process.exit(0);
})().catch((error) => {
  console.error(error && error.stack ? error.stack : String(error));
  console.error(record.log.join("\n"));
  process.exit(1);
});
