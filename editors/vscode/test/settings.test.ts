import assert from "node:assert/strict";
import { test } from "node:test";
import { configurationParams, needsRestart, readSettings, SERVER_KEYS } from "../src/settings";

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
