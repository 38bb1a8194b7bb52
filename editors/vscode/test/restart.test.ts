import assert from "node:assert/strict";
import { test } from "node:test";
import { Restarts, RESTART_POLICY, type RestartDecision } from "../src/restart";

function delays(decisions: RestartDecision[]): number[] {
  return decisions.map((decision) => (decision.action === "restart" ? decision.delayMs : -1));
}

test("a crash loop: five restarts with doubling delays within about a minute, then one give-up", () => {
  const restarts = new Restarts();
  let now = 0;
  const decisions: RestartDecision[] = [];
  for (let crash = 0; crash < 8; crash += 1) {
    decisions.push(restarts.crashed(now));
    if (decisions[crash].action === "restart") {
      now += (decisions[crash] as { delayMs: number }).delayMs + 5000; // the delay, then a model load, then it dies
      restarts.running(now - 4000);
    }
  }
  assert.deepEqual(delays(decisions), [500, 1000, 2000, 4000, 8000, -1, -1, -1]);
  assert.ok(now <= 60_000, `${now} ms`);
  // told once when it started, once when giving up; never again for the same outage
  assert.deepEqual(decisions.map((decision) => decision.announce), [true, false, false, false, false, true, false, false]);
  assert.deepEqual(decisions[5], { action: "give up", attempts: 5, announce: true });
  assert.equal(restarts.restarting, false);
});

test("a server that stays up ends the outage: the next crash is a new one, told again", () => {
  const restarts = new Restarts();
  assert.deepEqual(restarts.crashed(0), { action: "restart", attempt: 1, delayMs: 500, announce: true });
  assert.equal(restarts.restarting, true); // a failed start now counts as another crash of this outage
  restarts.running(3000);
  assert.equal(restarts.restarting, false);
  assert.deepEqual(restarts.crashed(3000 + RESTART_POLICY.stableMs - 1), { action: "restart", attempt: 2, delayMs: 1000, announce: false });
  restarts.running(10_000);
  assert.deepEqual(restarts.crashed(10_000 + RESTART_POLICY.stableMs), { action: "restart", attempt: 1, delayMs: 500, announce: true });
});

test("a restart by the user forgets a given-up outage", () => {
  const restarts = new Restarts({ maxTries: 1, firstDelayMs: 100, maxDelayMs: 100, stableMs: 1000 });
  assert.equal(restarts.crashed(0).action, "restart");
  assert.deepEqual(restarts.crashed(10), { action: "give up", attempts: 1, announce: true });
  restarts.reset();
  assert.deepEqual(restarts.crashed(20), { action: "restart", attempt: 1, delayMs: 100, announce: true });
});

test("the delay is capped", () => {
  const restarts = new Restarts({ maxTries: 10, firstDelayMs: 500, maxDelayMs: 3000, stableMs: 60_000 });
  const seen: number[] = [];
  for (let crash = 0; crash < 6; crash += 1) {
    seen.push((restarts.crashed(crash) as { delayMs: number }).delayMs);
  }
  assert.deepEqual(seen, [500, 1000, 2000, 3000, 3000, 3000]);
});
