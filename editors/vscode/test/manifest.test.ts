// package.json's settings: what a workspace (a cloned repository's .vscode/settings.json) may set.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { test } from "node:test";
import { MACHINE_KEYS, SERVER_KEYS } from "../src/settings";

interface Property {
  type: string | string[];
  enum?: unknown[];
  items?: { type: string };
  scope?: string;
}

const manifest = JSON.parse(readFileSync(resolve(__dirname, "../../package.json"), "utf8"));
const properties: Record<string, Property> = manifest.contributes.configuration.properties;
const LISTS_OF_NAMES = new Set(["tabfill.enabledLanguages"]); // language ids: no path, URL or command

test("every command, path, model, URL or free-text setting is machine-scoped (user settings only)", () => {
  const free: string[] = [];
  for (const [key, property] of Object.entries(properties)) {
    const types = Array.isArray(property.type) ? property.type : [property.type];
    const freeString = types.includes("string") && property.enum === undefined;
    const stringList = types.includes("array") && property.items?.type === "string" && !LISTS_OF_NAMES.has(key);
    if (freeString || stringList || /(^|\.)(path|args|dir|file)$|model|engine|url|command/i.test(key.slice("tabfill.".length))) {
      free.push(key);
      assert.equal(property.scope, "machine", `${key} must be "scope": "machine", is ${property.scope ?? "window (default)"}`);
    }
  }
  assert.deepEqual(free.sort(), MACHINE_KEYS.map((key) => `tabfill.${key}`).sort());
  for (const key of ["tabfill.server.path", "tabfill.server.args", "tabfill.model", "tabfill.engine", "tabfill.engineModel"]) {
    assert.ok(free.includes(key), key);
  }
});

test("machine scope is the only one used besides the default, and no setting is machine-overridable", () => {
  for (const [key, property] of Object.entries(properties)) {
    assert.ok(property.scope === undefined || property.scope === "machine", `${key}: ${property.scope}`);
    if (property.scope === "machine") {
      assert.ok(MACHINE_KEYS.includes(key.slice("tabfill.".length)), `${key} is machine-scoped but read from every layer`);
    }
  }
});

test("untrusted workspaces: limited support that names every machine setting", () => {
  const untrusted = manifest.capabilities.untrustedWorkspaces;
  assert.equal(untrusted.supported, "limited");
  assert.ok(untrusted.description.length > 20);
  assert.deepEqual([...untrusted.restrictedConfigurations].sort(), MACHINE_KEYS.map((key) => `tabfill.${key}`).sort());
});

test("every server setting is declared, and the declared enums are values the server accepts", () => {
  for (const key of SERVER_KEYS) {
    assert.ok(`tabfill.${key}` in properties, key);
  }
  assert.deepEqual(properties["tabfill.quantize"].enum, ["auto", "gguf", "none"]); // tabfill.completion.settings.QUANTIZE_CHOICES
});
