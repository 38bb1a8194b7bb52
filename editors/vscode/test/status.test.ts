import assert from "node:assert/strict";
import { test } from "node:test";
import { formatLatency, StatusModel } from "../src/status";

test("starting, then loading with progress, then ready with the last latency", () => {
  const model = new StatusModel();
  assert.equal(model.view().kind, "starting");
  model.progress("begin", "loading default", 0);
  model.progress("report", "loading weights", 42.4);
  let view = model.view();
  assert.equal(view.kind, "loading");
  assert.equal(view.text, "$(loading~spin) tabfill 42%");
  assert.match(view.tooltip, /loading weights/);
  model.progress("end", "ready");
  model.status({ state: "ready", model: "/m", device: "cpu", template: "prefix-only", lastLatencyMs: null });
  view = model.view();
  assert.equal(view.kind, "ready");
  assert.equal(view.text, "$(check) tabfill");
  assert.match(view.tooltip, /\/m on cpu/);
  model.latency(123.6);
  assert.equal(model.view().text, "$(check) tabfill 124 ms");
  model.latency(1534);
  assert.equal(model.view().text, "$(check) tabfill 1.5 s");
});

test("a failed load or a failed progress end is an error with the reason", () => {
  const model = new StatusModel();
  model.status({ state: "failed", error: "no such model: /nope" });
  assert.equal(model.view().kind, "error");
  assert.match(model.view().tooltip, /no such model: \/nope/);
  model.progress("report", "still loading", 50); // an error stays an error
  assert.equal(model.view().kind, "error");

  const other = new StatusModel();
  other.progress("begin", "loading", 0);
  other.progress("end", "model failed to load: out of memory");
  assert.equal(other.view().kind, "error");
  assert.match(other.view().tooltip, /out of memory/);
});

test("disabled wins over ready and shows how to turn it back on", () => {
  const model = new StatusModel();
  model.status({ state: "ready" });
  model.setEnabled(false);
  assert.equal(model.view().kind, "disabled");
  model.setEnabled(true);
  assert.equal(model.view().kind, "ready");
});

test("progress percentages are clamped and bad latencies ignored", () => {
  const model = new StatusModel();
  model.progress("report", "", 250);
  assert.equal(model.view().text, "$(loading~spin) tabfill 100%");
  model.status({ state: "ready" });
  model.latency(Number.NaN);
  model.latency(-5);
  assert.equal(model.view().text, "$(check) tabfill");
  assert.equal(formatLatency(undefined), "");
  assert.equal(formatLatency(12_345), "12 s");
});
