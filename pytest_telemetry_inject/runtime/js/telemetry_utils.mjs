// telemetry-inject: vendored runtime. Written by pytest-telemetry-inject; do not edit.
// The ES module entry of the runtime: the same instance as telemetry_utils.cjs (one set of
// counters, whichever way a file imports it).
import runtime from './telemetry_utils.cjs';

export const RUNTIME_VERSION = runtime.RUNTIME_VERSION;
export const span = runtime.span;
export const configure = runtime.configure;
export const flush = runtime.flush;
export const reset = runtime.reset;
export const snapshot = runtime.snapshot;
export const events = runtime.events;
export const formatReport = runtime.formatReport;
export const chromeTrace = runtime.chromeTrace;
export default runtime;
