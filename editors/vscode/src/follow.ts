// Pure logic (no `vscode` import): keeping up with a fast typist. Per document: the suggestion last shown
// (kept while the typed characters agree with it: no round trip), at most one request in flight (a key
// that leaves it cancels it; the next goes out when it has landed), a debounce from the measured key pace
// and server latency, and when to tell the server where the cursor rests (tabfill/warm).

export const WARM_NOTIFICATION = "tabfill/warm";
export const PAUSE_MS = 1000; // a longer gap between keys is a pause: the user is not typing then
const SMOOTHING = 0.3;

export interface FollowSettings {
  debounceMs: number | undefined; // a number fixes the debounce; undefined adapts it
  debounceMaxMs: number;
  staleMs: number; // a request unanswered this long no longer holds back the next one
}

export const DEFAULT_FOLLOW: FollowSettings = { debounceMs: undefined, debounceMaxMs: 150, staleMs: 1500 };

/** Where the cursor is: its line, UTF-16 character, and its line's text before it. */
export interface Cursor {
  line: number;
  character: number;
  before: string;
}

/** A suggestion anchored at a cursor: `text` is what inserting there adds; `item` is the client's item;
 * `cuts`: where its later pieces start (UTF-16 offsets into `text`, ascending; see `shownPart`). */
export interface Suggestion<T = unknown> {
  line: number;
  character: number;
  text: string;
  item: T;
  cuts?: number[];
}

/** Where the pieces of a suggestion start in its text: the server splits an answer where the model was
 * unsure (`pieces` in the accept command's argument, their concatenation the insert text); `skip` code
 * units of the insert text were already typed. undefined for an item without valid pieces. */
export function cutsOf(pieces: unknown, insert: string, skip: number): number[] | undefined {
  if (!Array.isArray(pieces) || pieces.length < 2 || !pieces.every((piece) => typeof piece === "string")) {
    return undefined;
  }
  const cuts: number[] = [];
  let at = 0;
  pieces.forEach((piece: string, index) => {
    at += piece.length;
    if (index < pieces.length - 1 && at > skip) {
      cuts.push(at - skip);
    }
  });
  return at === insert.length ? cuts : undefined;
}

/** `cuts` after `n` more code units of the text were typed or accepted. */
export function shiftCuts(cuts: number[] | undefined, n: number): number[] | undefined {
  return cuts?.filter((cut) => cut > n).map((cut) => cut - n);
}

/** What of `text` is shown: up to its first cut (what the model was sure of), never nothing. */
export function shownPart(text: string, cuts: number[] | undefined): string {
  const first = cuts?.[0];
  return first !== undefined && first > 0 && first < text.length ? text.slice(0, first) : text;
}

function average(previous: number | undefined, value: number): number {
  return previous === undefined ? value : (1 - SMOOTHING) * previous + SMOOTHING * value;
}

/** The user's key interval and the server's answer time, as moving averages. */
export class Pace {
  keyMs: number | undefined;
  lastKeyMs: number | undefined;
  latencyMs: number | undefined;

  key(nowMs: number): void {
    if (this.lastKeyMs !== undefined && nowMs - this.lastKeyMs <= PAUSE_MS) {
      this.keyMs = average(this.keyMs, nowMs - this.lastKeyMs);
    }
    this.lastKeyMs = nowMs;
  }

  answered(latencyMs: number): void {
    this.latencyMs = average(this.latencyMs, latencyMs);
  }

  /** The key interval while the user types (the last key within PAUSE_MS), else undefined. */
  interval(nowMs: number): number | undefined {
    if (this.keyMs === undefined || this.lastKeyMs === undefined || nowMs - this.lastKeyMs > PAUSE_MS) {
      return undefined;
    }
    return this.keyMs;
  }
}

/** 0 ms while answers come faster than keys (or either is unknown); when the server lags behind the
 * typing, the time it lags, at most `settings.debounceMaxMs`; a fixed setting wins. */
export function debounceMs(pace: Pace, nowMs: number, settings: FollowSettings): number {
  if (settings.debounceMs !== undefined) {
    return Math.max(0, settings.debounceMs);
  }
  const key = pace.interval(nowMs);
  const latency = pace.latencyMs;
  if (key === undefined || latency === undefined || latency <= key) {
    return 0;
  }
  return Math.floor(Math.min(settings.debounceMaxMs, latency - key));
}

/** What is left of `text` after `typed` was typed at its anchor; undefined when the typed text leaves it,
 * crosses a line or uses it up. */
export function restAfter(text: string, typed: string): string | undefined {
  if (typed === "") {
    return text === "" ? undefined : text;
  }
  if (typed.includes("\n") || !text.startsWith(typed) || text.length === typed.length) {
    return undefined;
  }
  return text.slice(typed.length);
}

/** The text typed between an anchor and the cursor on the anchor's line ("\n" when the cursor left it). */
export function typedSince(anchor: { line: number; character: number }, cursor: Cursor): string {
  if (cursor.line !== anchor.line || cursor.character < anchor.character) {
    return "\n";
  }
  return cursor.before.slice(anchor.character, cursor.character);
}

interface Flight<T> {
  at: Cursor;
  sentMs: number;
  explicit: boolean;
  abort: AbortController;
  answer: Promise<Suggestion<T> | undefined>; // never rejects
  landed: boolean;
}

/** A request in flight is worth its answer after a key when the cursor moved forward on its line by typing,
 * it is not stale, and the key agreed with the suggestion shown (the server answers by type-through) or
 * the request is about done (half the usual answer time has passed). */
export function keepInFlight(
  flight: { at: Cursor; sentMs: number; explicit: boolean },
  cursor: Cursor,
  nowMs: number,
  agreed: boolean,
  pace: Pace,
  settings: FollowSettings,
): boolean {
  const typed = typedSince(flight.at, cursor);
  if (flight.explicit || typed.includes("\n") || nowMs - flight.sentMs > settings.staleMs) {
    return false;
  }
  return agreed || pace.latencyMs === undefined || nowMs - flight.sentMs >= pace.latencyMs / 2;
}

/** What the follower needs from the editor: a clock, a cancellable wait, and the request itself (answers a
 * suggestion anchored at the cursor it was asked for, or undefined; aborting it sends $/cancelRequest and it
 * settles once the server has answered). */
export interface FollowDeps<T> {
  now(): number;
  sleep(ms: number, isCancelled: () => boolean): Promise<void>;
  send(at: Cursor, explicit: boolean, abort: AbortSignal): Promise<Suggestion<T> | undefined>;
}

/** One document's typing-follow state. */
export class Follower<T> {
  readonly pace = new Pace();
  private shown: Suggestion<T> | undefined;
  private flight: Flight<T> | undefined;
  private latest: Suggestion<T> | undefined; // the newest answer, for asking again at its place
  inFlight = 0;
  maxInFlight = 0;
  sent = 0;

  constructor(
    private readonly deps: FollowDeps<T>,
    private readonly settings: () => FollowSettings,
    private readonly onAnswer: (answer: Suggestion<T>) => void = () => undefined, // an answer nobody waited for
  ) {}

  /** The suggestion for the cursor: the one shown if the typed keys agree with it (at once; a request for
   * the cursor still goes out), else a request's answer (kept across keys while it still fits). */
  async provide(cursor: Cursor, isCancelled: () => boolean, explicit = false): Promise<Suggestion<T> | undefined> {
    const now = this.deps.now();
    this.pace.key(now);
    const kept = explicit ? undefined : (this.shown && this.fits(this.shown, cursor)) ?? (this.latest && this.fits(this.latest, cursor));
    if (kept) {
      this.shown = kept;
      if (!this.flight && !(this.latest && this.latest.line === cursor.line && this.latest.character === cursor.character)) {
        void this.ask(cursor, false, () => true); // still ask: its answer replaces the kept one (onAnswer)
      }
      return kept;
    }
    this.shown = undefined;
    let waited = await this.settle(cursor, isCancelled, explicit);
    if (waited === undefined) {
      const wait = debounceMs(this.pace, this.deps.now(), this.settings());
      if (wait > 0) {
        await this.deps.sleep(wait, isCancelled);
      }
      waited = isCancelled() ? null : await this.settle(cursor, isCancelled, explicit);
    }
    if (waited !== undefined) {
      this.shown = waited ?? undefined;
      return this.shown;
    }
    while (this.flight && !this.flight.landed) {
      const again = await this.settle(cursor, isCancelled, explicit); // another call sent one meanwhile
      if (again !== undefined) {
        this.shown = again ?? undefined;
        return this.shown;
      }
    }
    const answer = await this.ask(cursor, explicit, isCancelled);
    this.shown = answer && this.fits(answer, cursor);
    return this.shown;
  }

  /** Forget the suggestions kept (the server has a better one: tabfill/completionReady). */
  invalidate(): void {
    this.shown = undefined;
    this.latest = undefined;
  }

  /** Wait for the request in flight: its answer when it still fits the cursor, null when this call was
   * cancelled meanwhile, undefined when no request is in flight any more (so one may be sent). */
  private async settle(cursor: Cursor, isCancelled: () => boolean, explicit: boolean): Promise<Suggestion<T> | null | undefined> {
    for (let flight = this.flight; flight && !flight.landed; flight = this.flight) {
      if (!explicit && keepInFlight(flight, cursor, this.deps.now(), false, this.pace, this.settings())) {
        const answer = await flight.answer;
        const fits = answer && this.fits(answer, cursor);
        if (fits) {
          return fits;
        }
      } else {
        flight.abort.abort();
        await flight.answer; // at most one in flight: the next goes out once this one has landed
      }
      if (isCancelled()) {
        return null;
      }
    }
    return isCancelled() ? null : undefined;
  }

  private fits(suggestion: Suggestion<T>, cursor: Cursor): Suggestion<T> | undefined {
    const typed = typedSince(suggestion, cursor);
    const rest = restAfter(suggestion.text, typed);
    return rest === undefined
      ? undefined
      : { line: cursor.line, character: cursor.character, text: rest, item: suggestion.item, cuts: shiftCuts(suggestion.cuts, typed.length) };
  }

  /** Send a request (the only one in flight: a caller waits for the last to land first). `unheard`: when it
   * lands, nobody waits for its answer any more (then onAnswer gets it, so the editor can ask again). */
  private ask(cursor: Cursor, explicit: boolean, unheard: () => boolean): Promise<Suggestion<T> | undefined> {
    const abort = new AbortController();
    const sentMs = this.deps.now();
    this.sent += 1;
    this.inFlight += 1;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    const flight: Flight<T> = {
      at: cursor, sentMs, explicit, abort, landed: false,
      answer: this.deps.send(cursor, explicit, abort.signal).then(
        (answer) => {
          if (!abort.signal.aborted) {
            this.pace.answered(this.deps.now() - sentMs);
            this.latest = answer;
            if (answer && unheard()) {
              this.onAnswer(answer);
            }
          }
          return abort.signal.aborted ? undefined : answer;
        },
        () => undefined,
      ).finally(() => {
        flight.landed = true;
        this.inFlight -= 1;
        if (this.flight === flight) {
          this.flight = undefined;
        }
      }),
    };
    this.flight = flight;
    return flight.answer;
  }
}

/** When to send tabfill/warm: once per place (document, version, position) the cursor rests at. */
export class WarmGate {
  private last = "";

  shouldWarm(uri: string, version: number, line: number, character: number): boolean {
    const place = `${uri}\u0000${version}\u0000${line}\u0000${character}`;
    if (place === this.last) {
      return false;
    }
    this.last = place;
    return true;
  }
}
