// telemetry-inject: vendored runtime. Written by pytest-telemetry-inject; do not edit.
// Types of telemetry_utils.mjs (the ES module entry): the exports of telemetry_utils.cjs,
// which it re-exports, and that module itself as its default export.
export * from "./telemetry_utils.cjs";
import type * as runtime from "./telemetry_utils.cjs";
declare const instance: typeof runtime;
export default instance;
