// Pure logic (no `vscode` import): the extension's settings, mapped to the server command and to the
// server's settings (initializationOptions and workspace/didChangeConfiguration).
import { DEFAULT_FOLLOW, type FollowSettings } from "./follow";

/** Reads one setting, like vscode.WorkspaceConfiguration.get. */
export type Getter = (key: string) => unknown;

/** Settings that go to the server, by their key under `tabfill.` (the server accepts camelCase). */
export const SERVER_KEYS = [
  "model",
  "device",
  "maxNewTokens",
  "singleLineMaxNewTokens",
  "deadlineMs",
  "enabledLanguages",
  "maxPrefixTokens",
  "maxSuffixTokens",
  "multiLine",
  "syntaxPostprocess",
  "crossFileContext",
  "crossFileTokens",
  "confidencePercent",
  "leanForward",
  "quantize",
  "prefixCacheMb",
  "engine",
  "engineModel",
  "engineToken",
  "engineApiKey",
] as const;

/** Settings that name a program, a path, a hub id or a URL (or a key for one): "scope": "machine" in
 * package.json, and read here from the user's settings only, never from a workspace (a cloned repository's
 * .vscode/settings.json must not choose what runs, what is read or where code is sent). */
export const MACHINE_KEYS: readonly string[] = [
  "server.path",
  "server.args",
  "model",
  "device",
  "engine",
  "engineModel",
  "engineToken",
  "engineApiKey",
];

/** What vscode.WorkspaceConfiguration.inspect says about one setting (the layers this extension reads). */
export interface Inspected {
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
}

/** The value the user set for `key`, or undefined (then the server's default applies, not package.json's: a
 * default sent along would override the server's command-line options). Machine settings: user settings only. */
export function userValue(key: string, inspected: Inspected | undefined): unknown {
  if (!inspected) {
    return undefined;
  }
  if (MACHINE_KEYS.includes(key)) {
    return inspected.globalValue;
  }
  return inspected.workspaceFolderValue ?? inspected.workspaceValue ?? inspected.globalValue;
}

export type ServerSettings = Partial<Record<(typeof SERVER_KEYS)[number], unknown>>;

export interface ServerCommand {
  command: string;
  args: string[];
}

export interface ExtensionSettings {
  enable: boolean;
  follow: FollowSettings; // client-side: the debounce and a request's staleness (follow.ts)
  warm: boolean; // send tabfill/warm where the cursor rests
  server: ServerCommand;
  serverSettings: ServerSettings;
  problems: string[];
}

const DEFAULT_COMMAND = "tabfill";
const DEFAULT_ARGS = ["serve"];

/** Settings from a getter; a value of the wrong type is reported and the default kept. */
export function readSettings(get: Getter): ExtensionSettings {
  const problems: string[] = [];
  const enable = get("enable");
  const path = get("server.path");
  const args = get("server.args");
  let command = DEFAULT_COMMAND;
  if (typeof path === "string" && path.trim() !== "") {
    command = path.trim();
  } else if (path !== undefined && path !== null && path !== "") {
    problems.push(`tabfill.server.path must be a string, got ${JSON.stringify(path)}`);
  }
  let serverArgs = DEFAULT_ARGS;
  if (Array.isArray(args) && args.every((arg) => typeof arg === "string")) {
    serverArgs = args.length > 0 ? (args as string[]) : DEFAULT_ARGS;
  } else if (args !== undefined && args !== null) {
    problems.push(`tabfill.server.args must be a list of strings, got ${JSON.stringify(args)}`);
  }
  const serverSettings: ServerSettings = {};
  for (const key of SERVER_KEYS) {
    const value = get(key);
    if (value !== undefined && value !== null) {
      serverSettings[key] = value; // the server checks types and ranges and says what it ignored
    }
  }
  const number = (key: string, fallback: number | undefined, low: number): number | undefined => {
    const value = get(key);
    if (value === undefined || value === null) {
      return fallback;
    }
    if (typeof value !== "number" || !Number.isFinite(value) || value < low) {
      problems.push(`tabfill.${key} must be a number >= ${low}, got ${JSON.stringify(value)}`);
      return fallback;
    }
    return value;
  };
  const warm = get("warm");
  return {
    enable: typeof enable === "boolean" ? enable : true,
    follow: {
      debounceMs: number("debounceMs", DEFAULT_FOLLOW.debounceMs, 0),
      debounceMaxMs: number("debounceMaxMs", DEFAULT_FOLLOW.debounceMaxMs, 0) ?? DEFAULT_FOLLOW.debounceMaxMs,
      staleMs: DEFAULT_FOLLOW.staleMs,
    },
    warm: typeof warm === "boolean" ? warm : true,
    server: { command, args: serverArgs },
    serverSettings,
    problems,
  };
}

/** What workspace/didChangeConfiguration carries (the server reads the "tabfill" section). */
export function configurationParams(settings: ServerSettings): { settings: { tabfill: ServerSettings } } {
  return { settings: { tabfill: settings } };
}

/** Whether a change of these settings needs a new server process (the command changed). */
export function needsRestart(before: ServerCommand, after: ServerCommand): boolean {
  return before.command !== after.command || before.args.join("\u0000") !== after.args.join("\u0000");
}
