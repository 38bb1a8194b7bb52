import assert from "node:assert/strict";
import { test } from "node:test";
import { DID_PARTIALLY_ACCEPT, DID_SHOW, itemId, Signals, toJson, type ItemLike } from "../src/signals";

const item: ItemLike = {
  insertText: "return path",
  command: { title: "Accept tabfill suggestion", command: "tabfill.accept", arguments: [{ id: "abc", language: "python", latencyMs: 12 }] },
};

function recorder() {
  const sent: Array<[string, unknown]> = [];
  return { sent, signals: new Signals((method, params) => sent.push([method, params])) };
}

test("an item is shown once, with the item as the server sent it", () => {
  const { sent, signals } = recorder();
  signals.didShow(item);
  signals.didShow(item);
  assert.deepEqual(sent, [[DID_SHOW, { item: toJson(item) }]]);
  assert.deepEqual(toJson(item).command?.arguments, [{ id: "abc", language: "python", latencyMs: 12 }]);
});

test("partial accepts carry the accepted length, only when it grows, and imply a show", () => {
  const { sent, signals } = recorder();
  signals.didPartiallyAccept(item, 6);
  signals.didPartiallyAccept(item, { acceptedLength: 6 });
  signals.didPartiallyAccept(item, { acceptedLength: 3 });
  signals.didPartiallyAccept(item, { acceptedLength: 11 });
  assert.deepEqual(
    sent.map(([method, params]) => [method, (params as { acceptedLength?: number }).acceptedLength]),
    [[DID_SHOW, undefined], [DID_PARTIALLY_ACCEPT, 6], [DID_PARTIALLY_ACCEPT, 11]],
  );
});

test("items from elsewhere or bad lengths send nothing", () => {
  const { sent, signals } = recorder();
  const foreign: ItemLike = { insertText: "x", command: { command: "other.accept", arguments: [{ id: "abc" }] } };
  signals.didShow(foreign);
  signals.didShow({ insertText: "x" });
  signals.didShow({ insertText: "x", command: { command: "tabfill.accept", arguments: ["abc"] } });
  signals.didPartiallyAccept(item, 0);
  signals.didPartiallyAccept(item, Number.NaN);
  assert.deepEqual(sent, []);
  assert.equal(itemId(item), "abc");
  assert.equal(itemId(foreign), undefined);
  assert.equal(toJson({ insertText: { value: "snippet" } }).insertText, "snippet");
});

test("memory is bounded: an item forgotten long ago may be shown again", () => {
  const { sent, signals } = recorder();
  const limited = new Signals((method, params) => sent.push([method, params]), 2);
  const make = (id: string): ItemLike => ({ insertText: id, command: { command: "tabfill.accept", arguments: [{ id }] } });
  for (const id of ["a", "b", "c", "a"]) {
    limited.didShow(make(id));
  }
  assert.equal(sent.length, 4);
  void signals;
});
