// telemetry-inject: vendored runtime. Written by pytest-telemetry-inject; do not edit.
// Types of telemetry_utils.cjs.

/** One call in progress; instrumented code ends it in a finally block. */
export interface Span {
  end(): void;
  error(error: unknown): void;
}

/** Calls of one function so far. */
export interface FunctionStats {
  module: string;
  name: string;
  count: number;
  total_ns: number;
  min_ns: number;
  max_ns: number;
  errors: number;
  exceptions: Record<string, number>;
}

/** One call, as written to JSONL and kept for the trace. */
export interface TelemetryEvent {
  name: string;
  module: string;
  start_ns: number;
  ts_us: number;
  duration_ns: number;
  pid: number;
  tid: number;
  thread: string;
  id: number;
  parent: null;
  test: null;
  exception: string | null;
}

export interface Settings {
  disabled: boolean;
  min_duration: number;
  sample_rate: number;
  jsonl: string;
  trace: string;
  otel: boolean | "auto";
  report: string;
  keep_events: boolean;
  max_events: number;
}

export declare const RUNTIME_VERSION: number;
export declare function span(name: string): Span;
export declare function configure(settings?: Partial<Settings>): Settings;
export declare function flush(): void;
export declare function reset(): void;
export declare function snapshot(): FunctionStats[];
export declare function events(): TelemetryEvent[];
export declare function formatReport(rows?: FunctionStats[], top?: number): string;
export declare function chromeTrace(events: TelemetryEvent[], options?: { processName?: string; dropped?: number }): object;
