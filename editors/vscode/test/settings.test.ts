import assert from "node:assert/strict";
import { test } from "node:test";
import { configurationParams, needsRestart, readSettings, SERVER_KEYS, userValue } from "../src/settings";

function getter(values: Record<string, unknown>) {
  return (key: string) => values[key];
}

test("defaults: `tabfill serve`, enabled, nothing sent to the server", () => {
  const settings = readSettings(getter({}));
  assert.deepEqual(settings.server, { command: "tabfill", args: ["serve"] });
  assert.equal(settings.enable, true);
  assert.deepEqual(settings.serverSettings, {});
  assert.deepEqual(settings.problems, []);
});

test("server settings keep the server's camelCase keys; extension-only keys stay out", () => {
  const settings = readSettings(
    getter({ enable: false, "server.path": " /opt/tabfill ", "server.args": ["serve", "--model", "/m"], model: "/m", deadlineMs: 250, enabledLanguages: ["python"], multiLine: false }),
  );
  assert.equal(settings.enable, false);
  assert.deepEqual(settings.server, { command: "/opt/tabfill", args: ["serve", "--model", "/m"] });
  assert.deepEqual(settings.serverSettings, { model: "/m", deadlineMs: 250, enabledLanguages: ["python"], multiLine: false });
  for (const key of Object.keys(settings.serverSettings)) {
    assert.ok((SERVER_KEYS as readonly string[]).includes(key), key);
  }
  assert.deepEqual(configurationParams(settings.serverSettings), { settings: { tabfill: settings.serverSettings } });
});

test("a server command of the wrong type is reported and the default kept", () => {
  const settings = readSettings(getter({ "server.path": 42, "server.args": ["serve", 3] }));
  assert.deepEqual(settings.server, { command: "tabfill", args: ["serve"] });
  assert.equal(settings.problems.length, 2);
  assert.match(settings.problems[0], /server\.path must be a string/);
  assert.match(settings.problems[1], /server\.args must be a list of strings/);
});

test("only a changed command or arguments restart the server", () => {
  const a = { command: "tabfill", args: ["serve"] };
  assert.equal(needsRestart(a, { command: "tabfill", args: ["serve"] }), false);
  assert.equal(needsRestart(a, { command: "tabfill", args: ["serve", "--model", "x"] }), true);
  assert.equal(needsRestart(a, { command: "/bin/tabfill", args: ["serve"] }), true);
  assert.equal(needsRestart({ command: "t", args: ["a b"] }, { command: "t", args: ["a", "b"] }), true);
});

test("machine settings come from the user's settings only; the others from the nearest layer; defaults are not sent", () => {
  assert.equal(userValue("model", { globalValue: "/m", workspaceValue: "/evil", workspaceFolderValue: "/evil" }), "/m");
  assert.equal(userValue("model", { workspaceValue: "attacker/model" }), undefined);
  assert.equal(userValue("server.path", { workspaceValue: "/tmp/x/run.sh" }), undefined);
  assert.equal(userValue("engine", { workspaceFolderValue: "tcp://evil:7420" }), undefined);
  assert.equal(userValue("deadlineMs", { globalValue: 100, workspaceValue: 250 }), 250);
  assert.equal(userValue("deadlineMs", { globalValue: 100, workspaceValue: 250, workspaceFolderValue: 300 }), 300);
  assert.equal(userValue("deadlineMs", {}), undefined);
  assert.equal(userValue("deadlineMs", undefined), undefined);

  // a cloned repository's .vscode/settings.json cannot choose what runs, what is loaded or where code goes
  const layers: Record<string, { globalValue?: unknown; workspaceValue?: unknown }> = {
    "server.path": { workspaceValue: "./evil.sh" },
    "server.args": { workspaceValue: ["-c", "curl evil"] },
    model: { workspaceValue: "attacker/model" },
    engine: { workspaceValue: "openai+http://evil:8000/v1" },
    maxNewTokens: { workspaceValue: 32 },
  };
  const settings = readSettings((key) => userValue(key, layers[key]));
  assert.deepEqual(settings.server, { command: "tabfill", args: ["serve"] });
  assert.deepEqual(settings.serverSettings, { maxNewTokens: 32 });
});
