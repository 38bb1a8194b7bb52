// Pure logic (no `vscode` import): what the status-bar item says.

export type StatusKind = "starting" | "loading" | "ready" | "disabled" | "error";

export interface StatusView {
  kind: StatusKind;
  text: string;
  tooltip: string;
}

/** `tabfill/status` as the server answers it (fields may be missing on older servers). */
export interface ServerStatus {
  state?: string;
  error?: string | null;
  model?: string;
  device?: string;
  dtype?: string;
  template?: string;
  loadMs?: number | null;
  lastLatencyMs?: number | null;
}

export class StatusModel {
  private kind: StatusKind = "starting";
  private enabled = true;
  private percentage: number | undefined;
  private message = "";
  private reason = "";
  private latencyMs: number | undefined;
  private server: ServerStatus = {};

  /** `$/progress` of the model load. */
  progress(kind: "begin" | "report" | "end", message?: string, percentage?: number): void {
    if (kind === "end") {
      this.percentage = undefined;
      if (message && /fail|error/i.test(message)) {
        this.fail(message);
      }
      return;
    }
    if (this.kind !== "error") {
      this.kind = "loading";
    }
    if (message) {
      this.message = message;
    }
    if (typeof percentage === "number" && Number.isFinite(percentage)) {
      this.percentage = Math.max(0, Math.min(100, Math.round(percentage)));
    }
  }

  /** The answer to `tabfill/status`. */
  status(status: ServerStatus): void {
    this.server = status;
    if (status.state === "ready") {
      this.kind = "ready";
      this.reason = "";
    } else if (status.state === "error" || status.state === "failed") {
      this.fail(status.error || "the model failed to load");
    } else if (status.state === "loading" || status.state === "idle") {
      this.kind = "loading";
    }
    if (this.latencyMs === undefined && typeof status.lastLatencyMs === "number") {
      this.latencyMs = status.lastLatencyMs;
    }
  }

  /** The time from asking for a completion to its answer, measured in the editor. */
  latency(ms: number): void {
    if (Number.isFinite(ms) && ms >= 0) {
      this.latencyMs = ms;
    }
  }

  fail(reason: string): void {
    this.kind = "error";
    this.reason = reason;
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
  }

  get state(): StatusKind {
    return this.kind;
  }

  view(): StatusView {
    const model = this.server.model ? `${this.server.model} on ${this.server.device || "?"}` : "";
    if (this.kind === "error") {
      return { kind: "error", text: "$(error) tabfill", tooltip: `tabfill: ${this.reason}\nClick to show the log.` };
    }
    if (!this.enabled) {
      return { kind: "disabled", text: "$(circle-slash) tabfill", tooltip: "tabfill: completion is off. Click to turn it on." };
    }
    if (this.kind === "starting") {
      return { kind: "starting", text: "$(loading~spin) tabfill", tooltip: "tabfill: starting the server" };
    }
    if (this.kind === "loading") {
      const percent = this.percentage === undefined ? "" : ` ${this.percentage}%`;
      const detail = this.message ? `: ${this.message}` : "";
      return { kind: "loading", text: `$(loading~spin) tabfill${percent}`, tooltip: `tabfill: loading the model${detail}` };
    }
    const latency = formatLatency(this.latencyMs);
    const lines = [`tabfill: ready${model ? ` (${model})` : ""}`];
    if (this.server.template) {
      lines.push(`FIM template: ${this.server.template}`);
    }
    lines.push(latency ? `last completion: ${latency}` : "no completion yet");
    lines.push("Click to turn completion off.");
    return { kind: "ready", text: latency ? `$(check) tabfill ${latency}` : "$(check) tabfill", tooltip: lines.join("\n") };
  }
}

export function formatLatency(ms: number | undefined | null): string {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) {
    return "";
  }
  return ms >= 10_000 ? `${(ms / 1000).toFixed(0)} s` : ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}
