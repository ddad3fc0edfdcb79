// probe: makes the capability calls its input lists and reports each.
//
// The JavaScript twin of the Rust capability probe (skills-examples/hostile/
// capability-probe): the same input and the same output, so a test can send
// one list of calls to the Rust, Python and JavaScript probes and expect the
// same answers. It touches every interface of the world, and the standard
// `fetch`, which goes out through wasi:http and the same broker check.
//
// Input: {"calls": [{"op": "storage.get", "key": "a"}, ...]}. Operations:
// http.fetch (method, url, headers, body, credential), fetch (the global
// fetch: method, url, headers, body), storage.get|put|delete|list (key,
// value, prefix), secrets.mint (name, audience), tools.invoke (name,
// input), log (level, message), print (message, to stdout), fail (message:
// end the run with this error).
// Each result is {"ok": ...} or {"error": kind, "message": text}.

import { fetch as brokerFetch } from "airlock:skill/http@0.1.0";
import { emit } from "airlock:skill/log@0.1.0";
import { mintToken } from "airlock:skill/secrets@0.1.0";
import { get, put, delete as remove, listKeys } from "airlock:skill/storage@0.1.0";
import { invoke } from "airlock:skill/tools@0.1.0";

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const LEVELS = new Set(["debug", "info", "warn", "error"]);

class ProbeError extends Error {}

async function call(c) {
  switch (c.op) {
    case "http.fetch": {
      const r = brokerFetch({
        method: c.method ?? "GET",
        url: c.url ?? "",
        headers: c.headers ?? [],
        body: encoder.encode(c.body ?? ""),
        credential: c.credential ?? undefined,
      });
      return { status: r.status, headers: r.headers, body: decoder.decode(r.body) };
    }
    case "fetch": {
      const init = { method: c.method ?? "GET" };
      if (c.headers) init.headers = c.headers;
      if (c.body) init.body = c.body;
      const r = await fetch(c.url ?? "", init);
      return { status: r.status, body: await r.text() };
    }
    case "storage.get": {
      const value = get(c.key ?? "");
      return value === undefined ? null : decoder.decode(value);
    }
    case "storage.put":
      put(c.key ?? "", encoder.encode(c.value ?? ""));
      return null;
    case "storage.delete":
      return remove(c.key ?? "");
    case "storage.list":
      return listKeys(c.prefix ?? "");
    case "secrets.mint":
      return mintToken(c.name ?? "", c.audience ?? "");
    case "tools.invoke":
      return invoke(c.name ?? "", c.input ?? "");
    case "log":
      emit(LEVELS.has(c.level) ? c.level : "info", c.message ?? "");
      return null;
    case "print":
      console.log(c.message ?? "");
      return null;
    default:
      throw new ProbeError(`unknown op \`${c.op}\``);
  }
}

async function report(c) {
  try {
    return { ok: await call(c) };
  } catch (e) {
    if (e instanceof ProbeError) return { error: "probe", message: e.message };
    // A host error arrives as { tag, val }; the standard fetch throws a
    // TypeError when wasi:http refuses.
    const error = e.payload ?? e;
    if (typeof error.tag === "string") return { error: error.tag, message: error.val };
    return { error: "fetch", message: String(e) };
  }
}

export async function run(input) {
  let calls;
  try {
    calls = JSON.parse(input).calls;
  } catch (e) {
    throw `bad probe input: ${e}`;
  }
  const results = [];
  for (const c of calls) {
    if (c.op === "fail") throw c.message ?? "";
    results.push(await report(c));
  }
  return JSON.stringify({ results });
}
