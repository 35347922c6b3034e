// telemetry-inject: vendored runtime. Written by pytest-telemetry-inject; do not edit.
'use strict';
/*
 * The telemetry runtime for JavaScript and TypeScript: what instrumented code calls.
 * No dependencies. Instrumented functions do
 *
 *     const _telemetry_s = _telemetry.span("Qual.name"); try { ...body... }
 *     catch (_telemetry_e) { _telemetry_s.error(_telemetry_e); throw _telemetry_e; }
 *     finally { _telemetry_s.end(); }
 *
 * Per function it keeps the number of calls, the total, smallest and largest duration and
 * the errors (by constructor name). Environment variables, read when it is first loaded
 * (configure() changes the same settings later), as in the Python runtime:
 *
 *   TELEMETRY_INJECT_DISABLED=1         every span is a no-op
 *   TELEMETRY_INJECT_REPORT=1 | PATH    a table of calls at exit (stderr, or appended to
 *                                       PATH; a PATH ending in .json gets a JSON snapshot)
 *   TELEMETRY_INJECT_JSONL=PATH         one JSON event per call, appended to PATH
 *   TELEMETRY_INJECT_TRACE=PATH         a Chrome trace event file (Perfetto) at exit
 *   TELEMETRY_INJECT_OTEL=1 | 0         OpenTelemetry spans on / off (unset: on when
 *                                       @opentelemetry/api is installed and a real
 *                                       TracerProvider is registered)
 *   TELEMETRY_INJECT_MIN_DURATION=S     shorter calls are counted but not emitted
 *   TELEMETRY_INJECT_SAMPLE_RATE=0..1   the share of calls emitted as events
 *
 * A PATH may contain {pid}. Sinks are written at process exit and by flush(). It never
 * throws into user code: what it needs of the language's globals (Date, Math, JSON, Map,
 * Object...) is taken when it loads, so a program that deletes or fakes them later (a test
 * suite that simulates ES5, fake timers) changes nothing here, and every entry point
 * catches what it does not expect.
 *
 * Span names are "module:qualname" (the module is the file's path in its package, as the
 * tool names it): the report, the events and OpenTelemetry get the two apart, as Python's.
 */

const RUNTIME_VERSION = 3;
// Every copy of this file in a process (each package gets its own) shares one state: the
// first copy loaded makes it, the others use it, so a process has one set of counters,
// one JSONL stream, one trace and one report.
const SHARED = typeof Symbol === 'function' ? Symbol.for('pytest-telemetry-inject.runtime') : '__pytest_telemetry_inject_runtime__';
const GLOBAL = typeof globalThis !== 'undefined' ? globalThis : {};

// The globals the runtime uses, as they are when it loads.
const G = {
  dateNow: typeof Date === 'function' && typeof Date.now === 'function' ? Date.now.bind(Date) : () => 0,
  round: Math.round, random: Math.random, isFinite: Number.isFinite || isFinite,
  stringify: JSON.stringify, parse: JSON.parse, create: Object.create, assign: Object.assign,
  keys: Object.keys, entries: Object.entries, String, Number, Map: typeof Map === 'function' ? Map : null,
  Error: typeof Error === 'function' ? Error : null,
};

// A map of names to sites that needs no global Map.
function table() {
  if (G.Map !== null) return new G.Map();
  const store = G.create(null);
  return {
    get: (key) => store[key],
    set: (key, value) => { store[key] = value; },
    clear: () => { for (const key of G.keys(store)) delete store[key]; },
    values: () => G.keys(store).map((key) => store[key]),
  };
}

function create() {
  const TRUE = ['1', 'true', 'yes', 'on'];
  const FALSE = ['0', 'false', 'no', 'off'];
  const SPILL_AT = 4096;

  let fs = null;
  try { fs = require('fs'); } catch (e) { fs = null; } // a browser bundle: no files
  const proc = typeof process !== 'undefined' ? process : null;
  const env = (proc && proc.env) || {};
  const perf = typeof performance !== 'undefined' && performance && typeof performance.now === 'function' ? performance : null;
  const perfNow = perf ? perf.now.bind(perf) : null; // the clock as it is now: fake timers come later
  const now = perfNow || G.dateNow;
  const EPOCH_MS = perf && typeof perf.timeOrigin === 'number' ? perf.timeOrigin : G.dateNow() - now();
  const pid = proc && typeof proc.pid === 'number' ? proc.pid : 0;
  let tid = 0;
  let threadName = 'main';
  try {
    const wt = require('worker_threads');
    tid = wt.threadId || 0;
    if (!wt.isMainThread) threadName = `worker ${tid}`;
  } catch (e) { /* no worker threads here */ }

  const config = {
    disabled: false, min_duration: 0, sample_rate: 1, jsonl: '', trace: '', otel: 'auto', report: '',
    keep_events: false, max_events: 200000,
  };

  class Site {
    constructor(key) {
      // "module:qualname": the module is the file's path, which has no colon.
      const at = key.indexOf(':');
      this.module = at > 0 ? key.slice(0, at) : '';
      this.name = at > 0 ? key.slice(at + 1) : key;
      this.count = 0;
      this.total = 0; // milliseconds (floats: perf.now())
      this.min = 0;
      this.max = 0;
      this.errors = 0;
      this.exceptions = null; // name -> count
    }
  }

  const sites = table();
  let pending = []; // JSONL lines not yet written
  let kept = []; // events kept for the trace and events()
  let dropped = 0;
  let nextId = 1;
  let eventsOn = false;
  let otelMode = false; // false | true | 'auto'
  let otelState = null; // { tracer, api } once OpenTelemetry is on
  let otelCheckedAt = -Infinity;

  const NOOP = { end() {}, error() {} };

  function exceptionName(error) {
    try {
      if (G.Error !== null && error instanceof G.Error) {
        return (error.constructor && error.constructor.name) || error.name || 'Error';
      }
      if (error === null) return 'null';
      if (typeof error === 'object' && error.constructor && error.constructor.name) return error.constructor.name;
      return typeof error;
    } catch (e) {
      return 'unknown';
    }
  }

  class Span {
    constructor(site) {
      this.site = site;
      this.failed = undefined;
      this.hasError = false;
      this.ot = null;
      this.t0 = now();
    }

    error(error) {
      this.hasError = true;
      this.failed = error;
    }

    end() {
      try {
        const site = this.site;
        const duration = now() - this.t0;
        if (site.count === 0 || duration < site.min) site.min = duration;
        if (duration > site.max) site.max = duration;
        site.count += 1;
        site.total += duration;
        if (this.hasError) {
          site.errors += 1;
          const kind = exceptionName(this.failed);
          if (site.exceptions === null) site.exceptions = G.create(null);
          site.exceptions[kind] = (site.exceptions[kind] || 0) + 1;
        }
        if (this.ot !== null) endOtel(this.ot, this.hasError, this.failed);
        if (eventsOn) emit(this, duration);
      } catch (e) { /* never into user code */ }
    }
  }

  function span(name) {
    if (config.disabled) return NOOP;
    try {
      let site = sites.get(name);
      if (site === undefined) {
        site = new Site(G.String(name));
        sites.set(name, site);
      }
      const s = new Span(site);
      if (otelMode !== false) {
        const state = otelState || maybeOtel();
        if (state !== null) s.ot = startOtel(state, site);
      }
      return s;
    } catch (e) {
      return NOOP; // never into user code
    }
  }

  // -- events ----------------------------------------------------------------------------------

  function ns(ms) {
    return G.round(ms * 1e6);
  }

  function emit(s, duration) {
    if (duration < config.min_duration * 1000) return;
    if (config.sample_rate < 1 && G.random() >= config.sample_rate) return;
    const event = {
      name: s.site.name, module: s.site.module, start_ns: ns(s.t0), ts_us: G.round((EPOCH_MS + s.t0) * 1000),
      duration_ns: ns(duration), pid, tid, thread: threadName, id: nextId++, parent: null, test: null,
      exception: s.hasError ? exceptionName(s.failed) : null,
    };
    if (config.jsonl) {
      pending.push(jsonLine(event));
      if (pending.length >= SPILL_AT) writeJsonl();
    }
    if (config.trace || config.keep_events) {
      if (kept.length < config.max_events) kept.push(event);
      else dropped += 1;
    }
  }

  function jsonLine(e) {
    let line = `{"name":${G.stringify(e.name)},"module":${G.stringify(e.module)},"start_ns":${e.start_ns},` +
      `"ts_ns":${e.ts_us}000,"duration_ns":${e.duration_ns},"pid":${e.pid},"tid":${e.tid},` +
      `"thread":${G.stringify(e.thread)},"id":${e.id},"parent":null,"test":null`;
    if (e.exception !== null) line += `,"exception":${G.stringify(e.exception)}`;
    return line + '}\n';
  }

  function expand(path) {
    let out = path.split('{pid}').join(G.String(pid));
    if (tid && path.indexOf('{pid}') < 0 && out === path) out = `${out}.thread${tid}`;
    return out;
  }

  function writeJsonl() {
    if (!pending.length) return;
    const data = pending.join('');
    pending = [];
    if (fs === null || !config.jsonl) return;
    try {
      fs.appendFileSync(config.jsonl.split('{pid}').join(G.String(pid)), data);
    } catch (e) { /* a sink that fails loses its batch */ }
  }

  function chromeTrace(events, options) {
    const opts = options || {};
    const out = [];
    const byThread = table();
    for (const e of events) {
      const key = `${e.pid}:${e.tid}`;
      if (byThread.get(key) === undefined) byThread.set(key, []);
      byThread.get(key).push(e);
    }
    const named = table();
    let nextTrack = 1;
    for (const items of byThread.values()) {
      const first = items[0];
      if (named.get(first.pid) === undefined) {
        named.set(first.pid, true);
        const label = opts.processName || `${(proc && proc.argv && proc.argv[1]) || 'node'} (${first.pid})`;
        out.push({ name: 'process_name', ph: 'M', pid: first.pid, tid: 0, args: { name: label } });
      }
      items.sort((a, b) => (a.start_ns - b.start_ns) || (b.duration_ns - a.duration_ns));
      // Spans of one thread that overlap without nesting (async functions, generators) go to
      // extra tracks, so that every track nests properly.
      const lanes = [];
      for (const e of items) {
        const start = e.start_ns;
        const end = e.start_ns + e.duration_ns;
        let track = 0;
        for (const lane of lanes) {
          const stack = lane[1];
          while (stack.length && stack[stack.length - 1] <= start) stack.pop();
          if (!stack.length || end <= stack[stack.length - 1]) {
            stack.push(end);
            track = lane[0];
            break;
          }
        }
        if (!track) {
          track = nextTrack++;
          const name = lanes.length ? `${first.thread} (overlapping spans ${lanes.length})` : first.thread;
          out.push({ name: 'thread_name', ph: 'M', pid: first.pid, tid: track, args: { name } });
          out.push({ name: 'thread_sort_index', ph: 'M', pid: first.pid, tid: track, args: { sort_index: track } });
          lanes.push([track, [end]]);
        }
        const args = { module: e.module || null, test: null };
        if (e.exception) args.exception = e.exception;
        out.push({ name: e.name, cat: 'function', ph: 'X', ts: e.start_ns / 1000, dur: e.duration_ns / 1000,
          pid: first.pid, tid: track, args });
      }
    }
    return { traceEvents: out, displayTimeUnit: 'ms',
      otherData: { producer: 'pytest-telemetry-inject', runtime: 'javascript', runtime_version: RUNTIME_VERSION,
        dropped_events: opts.dropped || 0 } };
  }

  function writeTrace() {
    if (fs === null || !config.trace) return;
    try {
      const path = expand(config.trace);
      const tmp = `${path}.${pid}.tmp`;
      fs.writeFileSync(tmp, G.stringify(chromeTrace(kept, { dropped })));
      fs.renameSync(tmp, path);
    } catch (e) { /* a sink that fails is skipped */ }
  }

  // -- OpenTelemetry ---------------------------------------------------------------------------

  function maybeOtel() {
    if (otelMode === true) return (otelState = loadOtel(true));
    const t = G.dateNow();
    if (t - otelCheckedAt < 1000) return null;
    otelCheckedAt = t;
    otelState = loadOtel(false);
    return otelState;
  }

  function loadOtel(force) {
    let api = null;
    try { api = require('@opentelemetry/api'); } catch (e) { return null; }
    try {
      if (!force) {
        const provider = api.trace.getTracerProvider();
        const real = provider && typeof provider.getDelegate === 'function' ? provider.getDelegate() : provider;
        if (!real || !real.constructor || real.constructor.name === 'NoopTracerProvider') return null;
      }
      return { api, tracer: api.trace.getTracer('pytest-telemetry-inject', G.String(RUNTIME_VERSION)) };
    } catch (e) {
      return null;
    }
  }

  function startOtel(state, site) {
    try {
      const attributes = { 'code.function': site.name };
      if (site.module) attributes['code.namespace'] = site.module;
      return { span: state.tracer.startSpan(site.name, { attributes }), api: state.api };
    } catch (e) {
      return null;
    }
  }

  function endOtel(ot, failed, error) {
    try {
      if (failed) {
        if (G.Error !== null && error instanceof G.Error) ot.span.recordException(error);
        ot.span.setStatus({ code: ot.api.SpanStatusCode.ERROR, message: exceptionName(error) });
      }
      ot.span.end();
    } catch (e) { /* ignore */ }
  }

  // -- the API ---------------------------------------------------------------------------------

  function snapshot() {
    const rows = [];
    for (const site of sites.values()) {
      rows.push({
        module: site.module, name: site.name, count: site.count, total_ns: ns(site.total), min_ns: ns(site.min),
        max_ns: ns(site.max), errors: site.errors,
        exceptions: site.exceptions ? G.assign({}, site.exceptions) : {},
      });
    }
    return rows;
  }

  function events() {
    return kept.map((e) => G.assign({}, e));
  }

  function pad(text, width, right) {
    const s = G.String(text);
    if (s.length >= width) return s;
    const fill = ' '.repeat(width - s.length);
    return right ? fill + s : s + fill;
  }

  function formatReport(rows, top) {
    const all = rows || snapshot();
    const limit = top || 25;
    const width = 60;
    const called = all.filter((r) => r.count).sort((a, b) => (b.total_ns - a.total_ns) || (a.name < b.name ? -1 : 1));
    const lines = [`${pad('function', width)} ${pad('calls', 9, true)} ${pad('total ms', 10, true)} ` +
      `${pad('mean us', 10, true)} ${pad('min us', 9, true)} ${pad('max us', 10, true)} ${pad('errors', 6, true)}`];
    for (const r of called.slice(0, limit)) {
      let name = r.module ? `${r.module}:${r.name}` : r.name;
      if (name.length > width) name = `...${name.slice(name.length - (width - 3))}`;
      lines.push(`${pad(name, width)} ${pad(r.count, 9, true)} ${pad((r.total_ns / 1e6).toFixed(3), 10, true)} ` +
        `${pad((r.total_ns / r.count / 1e3).toFixed(2), 10, true)} ${pad((r.min_ns / 1e3).toFixed(2), 9, true)} ` +
        `${pad((r.max_ns / 1e3).toFixed(2), 10, true)} ${pad(r.errors, 6, true)}`);
    }
    if (called.length > limit) lines.push(`... and ${called.length - limit} more functions called`);
    const calls = called.reduce((n, r) => n + r.count, 0);
    const errors = called.reduce((n, r) => n + r.errors, 0);
    lines.push(`${called.length} functions called, ${calls} calls, ${errors} raised`);
    const failing = called.filter((r) => r.errors).sort((a, b) => b.errors - a.errors);
    if (failing.length) {
      lines.push('exceptions:');
      for (const r of failing.slice(0, limit)) {
        const kinds = G.entries(r.exceptions || {}).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} x${v}`);
        lines.push(`  ${r.module ? `${r.module}:` : ''}${r.name}: ${r.errors} (${kinds.join(', ')})`);
      }
    }
    return lines.join('\n');
  }

  function flush() {
    writeJsonl();
    writeTrace();
  }

  function reset() {
    sites.clear();
    pending = [];
    kept = [];
    dropped = 0;
  }

  function apply() {
    eventsOn = Boolean(config.jsonl || config.trace || config.keep_events);
    otelMode = config.disabled ? false : config.otel;
    otelState = null;
    otelCheckedAt = -Infinity;
  }

  function configure(settings) {
    const known = G.keys(config);
    for (const key of G.keys(settings || {})) {
      if (known.indexOf(key) < 0) throw new TypeError(`configure() got an unknown setting: ${key}`);
    }
    flush();
    G.assign(config, settings || {});
    apply();
    return G.assign({}, config);
  }

  function writeReport() {
    const where = config.report;
    if (!where) return;
    const rows = snapshot();
    if (!rows.some((r) => r.count)) return;
    if (TRUE.indexOf(where.toLowerCase()) >= 0) {
      if (proc && proc.stderr) proc.stderr.write(`telemetry:\n${formatReport(rows)}\n`);
      return;
    }
    if (fs === null) return;
    const path = expand(where);
    if (path.endsWith('.json')) {
      fs.writeFileSync(path, G.stringify({ format: 1, runtime: 'javascript', runtime_version: RUNTIME_VERSION,
        functions: rows }, null, 1));
      return;
    }
    fs.appendFileSync(path, `${formatReport(rows)}\n`);
  }

  function atExit() {
    try { flush(); } catch (e) { /* ignore */ }
    try { writeReport(); } catch (e) { /* ignore */ }
  }

  function readEnvironment() {
    const flag = (name) => G.String(env[name] || '').trim().toLowerCase();
    config.disabled = TRUE.indexOf(flag('TELEMETRY_INJECT_DISABLED')) >= 0;
    for (const [name, key] of [['TELEMETRY_INJECT_MIN_DURATION', 'min_duration'], ['TELEMETRY_INJECT_SAMPLE_RATE', 'sample_rate']]) {
      const text = G.String(env[name] || '').trim();
      if (text) {
        const value = G.Number(text);
        if (G.isFinite(value)) config[key] = value;
        else if (proc && proc.stderr) proc.stderr.write(`telemetry: ignoring ${name}=${G.stringify(text)} (not a number)\n`);
      }
    }
    config.jsonl = G.String(env.TELEMETRY_INJECT_JSONL || '').trim();
    config.trace = G.String(env.TELEMETRY_INJECT_TRACE || '').trim();
    const otel = flag('TELEMETRY_INJECT_OTEL');
    config.otel = TRUE.indexOf(otel) >= 0 ? true : FALSE.indexOf(otel) >= 0 ? false : 'auto';
    const report = G.String(env.TELEMETRY_INJECT_REPORT || '').trim();
    config.report = FALSE.indexOf(report.toLowerCase()) >= 0 ? '' : report;
  }

  try {
    readEnvironment();
    apply();
    if (proc && typeof proc.on === 'function') proc.on('exit', atExit);
  } catch (e) { /* a broken environment must not break the program */ }

  return { RUNTIME_VERSION, span, configure, flush, reset, snapshot, events, formatReport, chromeTrace };
}

const found = GLOBAL[SHARED];
const runtime = found && found.RUNTIME_VERSION === RUNTIME_VERSION ? found : (GLOBAL[SHARED] = create());

exports.RUNTIME_VERSION = RUNTIME_VERSION;
exports.span = runtime.span;
exports.configure = runtime.configure;
exports.flush = runtime.flush;
exports.reset = runtime.reset;
exports.snapshot = runtime.snapshot;
exports.events = runtime.events;
exports.formatReport = runtime.formatReport;
exports.chromeTrace = runtime.chromeTrace;
