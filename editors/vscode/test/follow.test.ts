import assert from "node:assert/strict";
import { test } from "node:test";
import { DEFAULT_FOLLOW, Follower, Pace, WarmGate, cutsOf, debounceMs, keepInFlight, restAfter, shiftCuts, shownPart, type Cursor, type FollowDeps, type Suggestion } from "../src/follow";

test("the debounce: 0 while answers beat the keys, the lag when the server is slower, within bounds, or fixed", () => {
  const pace = new Pace();
  assert.equal(debounceMs(pace, 0, DEFAULT_FOLLOW), 0); // nothing measured: ask at once
  assert.equal(debounceMs(pace, 0, { ...DEFAULT_FOLLOW, debounceMs: 40 }), 40);
  for (let t = 0; t <= 1000; t += 100) pace.key(t); // 10 keys/s
  pace.answered(30);
  assert.equal(debounceMs(pace, 1000, DEFAULT_FOLLOW), 0);
  for (let i = 0; i < 20; i++) pace.answered(180);
  const slow = debounceMs(pace, 1000, DEFAULT_FOLLOW);
  assert.ok(slow >= 70 && slow <= 80, String(slow));
  for (let i = 0; i < 20; i++) pace.answered(900);
  assert.equal(debounceMs(pace, 1000, DEFAULT_FOLLOW), 150); // capped
  assert.equal(debounceMs(pace, 2500, DEFAULT_FOLLOW), 0); // resting: not typing
});

test("what is left of a suggestion after typing into it", () => {
  assert.equal(restAfter("return x", "ret"), "urn x");
  assert.equal(restAfter("return x", "rex"), undefined);
  assert.equal(restAfter("ab", "ab"), undefined);
  assert.equal(restAfter("a\nb", "a\n"), undefined);
  assert.equal(restAfter("ab", ""), "ab");
});

test("pieces: the first is shown, typing or accepting moves on to the next, bad pieces are ignored", () => {
  const pieces = ["total = compute", "_total(items", ", tax)"];
  const insert = pieces.join("");
  assert.deepEqual(cutsOf(pieces, insert, 0), [15, 27]);
  assert.deepEqual(cutsOf(pieces, insert, 3), [12, 24]); // 3 units of the insert text were typed already
  assert.equal(shownPart(insert, cutsOf(pieces, insert, 0)), "total = compute");
  const typedInto = shiftCuts([15, 27], 16); // through the first piece and into the second
  assert.deepEqual(typedInto, [11]);
  assert.equal(shownPart(insert.slice(16), typedInto), "total(items");
  assert.equal(shownPart(", tax)", shiftCuts([15, 27], 27)), ", tax)");
  assert.equal(cutsOf(["abc", " de"], "abc def", 0), undefined); // not the insert text
  assert.equal(cutsOf(["abc", 1], "abc1", 0), undefined);
  assert.equal(cutsOf(undefined, "abc", 0), undefined);
  assert.equal(shownPart("abc", undefined), "abc");
  assert.equal(shownPart("😀x", cutsOf(["😀", "x"], "😀x", 0)), "😀"); // UTF-16 units, like the editor's
});

test("a kept suggestion keeps its pieces as the keys agree", async () => {
  const server = new Server();
  const follower = new Follower(server.deps, () => DEFAULT_FOLLOW);
  const first = follower.provide(cursorAfter(""), () => false);
  await tick();
  const entry = server.pending.shift();
  assert.ok(entry);
  entry.resolve({ line: 0, character: 0, text: "total = compute_total(items", item: "x", cuts: [15] });
  assert.equal(shownPart((await first)!.text, (await first)!.cuts), "total = compute");
  server.now = 100;
  const kept = await follower.provide(cursorAfter("total = compute_"), () => false);
  assert.deepEqual(kept?.cuts, []);
  assert.equal(kept && shownPart(kept.text, kept.cuts), "total(items");
});

test("a request in flight is kept when the key agrees or it is about done", () => {
  const at: Cursor = { line: 3, character: 4, before: "    " };
  const flight = { at, sentMs: 1000, explicit: false };
  const pace = new Pace();
  pace.answered(100);
  const typed: Cursor = { line: 3, character: 5, before: "    x" };
  assert.equal(keepInFlight(flight, typed, 1010, true, pace, DEFAULT_FOLLOW), true);
  assert.equal(keepInFlight(flight, typed, 1010, false, pace, DEFAULT_FOLLOW), false);
  assert.equal(keepInFlight(flight, typed, 1060, false, pace, DEFAULT_FOLLOW), true);
  assert.equal(keepInFlight(flight, { line: 4, character: 0, before: "" }, 1060, true, pace, DEFAULT_FOLLOW), false);
  assert.equal(keepInFlight(flight, typed, 3000, true, pace, DEFAULT_FOLLOW), false); // stale
  assert.equal(keepInFlight({ ...flight, explicit: true }, typed, 1060, true, pace, DEFAULT_FOLLOW), false);
});

/** A scripted server: each request waits until the test answers it; counts what is in flight at once. */
class Server {
  now = 0;
  pending: { at: Cursor; resolve: (s: Suggestion<string> | undefined) => void; aborted: boolean }[] = [];
  inFlight = 0;
  maxInFlight = 0;
  sent: Cursor[] = [];
  deps: FollowDeps<string> = {
    now: () => this.now,
    sleep: async () => undefined,
    send: (at, _explicit, abort) =>
      new Promise((resolve) => {
        this.sent.push(at);
        this.inFlight += 1;
        this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        const entry = { at, aborted: false, resolve: (s: Suggestion<string> | undefined) => { this.inFlight -= 1; resolve(s); } };
        abort.addEventListener("abort", () => { entry.aborted = true; });
        this.pending.push(entry);
      }),
  };

  /** Answer the oldest request with the rest of `target` after what was typed on its line. */
  answer(target: string): void {
    const entry = this.pending.shift();
    assert.ok(entry, "no request to answer");
    const typed = entry.at.before.trimStart();
    const text = target.startsWith(typed) ? target.slice(typed.length) : "";
    entry.resolve(entry.aborted || !text ? undefined : { line: entry.at.line, character: entry.at.character, text, item: text });
  }
}

const tick = () => new Promise((resolve) => setImmediate(resolve));
const cursorAfter = (typed: string): Cursor => ({ line: 0, character: typed.length, before: typed });

test("keys that agree with the suggestion keep the rest at once, and it still asks", async () => {
  const server = new Server();
  const follower = new Follower(server.deps, () => DEFAULT_FOLLOW);
  const target = "result = compute(items)";
  const first = follower.provide(cursorAfter(""), () => false);
  await tick();
  server.answer(target);
  assert.equal((await first)?.text, target);
  server.now = 100;
  const kept = await follower.provide(cursorAfter("r"), () => false); // resolves without any answer
  assert.equal(kept?.text, target.slice(1));
  assert.equal(server.sent.length, 2); // still asked, for the new place
  server.now = 200;
  assert.equal((await follower.provide(cursorAfter("re"), () => false))?.text, target.slice(2));
  assert.equal(server.maxInFlight, 1);
  assert.equal(await Promise.race([follower.provide(cursorAfter("reQ"), () => true), tick().then(() => "waiting")]), "waiting");
});

test("at most one request in flight while typing fast, whatever the keys", async () => {
  const server = new Server();
  const follower = new Follower(server.deps, () => ({ ...DEFAULT_FOLLOW, debounceMs: 0 }));
  let typed = "";
  const calls: Promise<unknown>[] = [];
  const cancelled: boolean[] = [];
  for (const char of "zyxwvutsrq") {
    typed += char;
    server.now += 30;
    cancelled.forEach((_, i) => (cancelled[i] = true)); // VS Code cancels the older call at each key
    const index = cancelled.push(false) - 1;
    calls.push(follower.provide(cursorAfter(typed), () => cancelled[index]));
    await tick();
    if (server.now % 90 === 0 && server.pending.length) server.answer("nothing like it");
  }
  while (server.pending.length) {
    server.answer("nothing like it");
    await tick();
  }
  await Promise.all(calls);
  assert.equal(server.maxInFlight, 1);
  assert.equal(follower.maxInFlight, 1);
  assert.ok(server.sent.length <= 5, String(server.sent.length)); // 10 keys: no request per key
});

test("warm once per place the cursor rests at", () => {
  const gate = new WarmGate();
  assert.equal(gate.shouldWarm("file:///a.py", 1, 3, 4), true);
  assert.equal(gate.shouldWarm("file:///a.py", 1, 3, 4), false);
  assert.equal(gate.shouldWarm("file:///a.py", 2, 3, 4), true); // edited since
  assert.equal(gate.shouldWarm("file:///b.py", 2, 3, 4), true);
});
