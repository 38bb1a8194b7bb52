// Pure logic (no `vscode` import): when to restart a server that stopped on its own, and when to say so.
//
// An outage starts with a crash of a server that had been up for `stableMs` (or the first crash ever) and
// lasts until a restarted server stays up that long. Within an outage the server is restarted at most
// `maxTries` times, after delays that double from `firstDelayMs` (capped at `maxDelayMs`): 0.5, 1, 2, 4
// and 8 s by default, so five tries (each also loading the model) take about a minute before giving up.
// The user is told once when an outage starts and once more only if it ends in giving up.

export interface RestartPolicy {
  maxTries: number;
  firstDelayMs: number;
  maxDelayMs: number;
  stableMs: number; // up this long after a (re)start: the outage is over
}

export const RESTART_POLICY: RestartPolicy = { maxTries: 5, firstDelayMs: 500, maxDelayMs: 8000, stableMs: 60_000 };

export type RestartDecision =
  | { action: "restart"; attempt: number; delayMs: number; announce: boolean }
  | { action: "give up"; attempts: number; announce: boolean };

export class Restarts {
  private attempts = 0;
  private upSince: number | undefined;
  private gaveUp = false;

  constructor(private readonly policy: RestartPolicy = RESTART_POLICY) {}

  /** The server (re)started and answered initialize at `now`. */
  running(now: number): void {
    this.upSince = now;
  }

  /** The server stopped without being asked to (or a restart failed) at `now`: what to do. */
  crashed(now: number): RestartDecision {
    if (this.upSince !== undefined && now - this.upSince >= this.policy.stableMs) {
      this.reset(); // it had been up long enough: a new outage
    }
    this.upSince = undefined;
    if (this.attempts >= this.policy.maxTries) {
      const announce = !this.gaveUp;
      this.gaveUp = true;
      return { action: "give up", attempts: this.attempts, announce };
    }
    this.attempts += 1;
    const delayMs = Math.min(this.policy.maxDelayMs, this.policy.firstDelayMs * 2 ** (this.attempts - 1));
    return { action: "restart", attempt: this.attempts, delayMs, announce: this.attempts === 1 };
  }

  /** Whether the server is being restarted after a crash (a failed start then counts as one more crash). */
  get restarting(): boolean {
    return this.attempts > 0 && !this.gaveUp && this.upSince === undefined;
  }

  /** The user restarted the server or changed its command: forget the outage. */
  reset(): void {
    this.attempts = 0;
    this.gaveUp = false;
  }

  get maxTries(): number {
    return this.policy.maxTries;
  }
}
