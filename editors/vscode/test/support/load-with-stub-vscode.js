// Loads a built extension entry point with a stand-in for the \`vscode\` module (which only exists
// inside VS Code), to check that it and its bundled runtime dependencies resolve and load.
// Usage: node load-with-stub-vscode.js <path/to/extension.js>  -> prints "function function"
"use strict";
const Module = require("module");
const original = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === "vscode") return "vscode";
  return original.call(this, request, ...rest);
};
function stubModule() {
  const cache = {};
  return new Proxy({ __esModule: true }, {
    get: (target, name) => {
      if (name in target) return target[name];
      if (!(name in cache)) cache[name] = class Stub {};
      return cache[name];
    },
  });
}
require.cache["vscode"] = { id: "vscode", filename: "vscode", loaded: true, exports: stubModule() };
const extension = require(require("path").resolve(process.argv[2]));
console.log(typeof extension.activate, typeof extension.deactivate);
