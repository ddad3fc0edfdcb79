// bookmarks: keeps bookmarks in storage and lists them.
//
// Input: {"add": {"name": "...", "url": "..."}} to add one, {} to list.
// Output: {"bookmarks": [{"name": ..., "url": ...}, ...]} in name order.
// Every storage call is decided by the broker; a denial is thrown with the
// payload { tag: "denied", val: "..." }. console.log lines become log lines.

import { get, put, listKeys } from "airlock:skill/storage@0.1.0";

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function explain(e) {
  const error = e.payload ?? e;
  if (error.tag === "denied") return `not allowed: ${error.val}`;
  return `storage failed: ${JSON.stringify(error)}`;
}

export function run(input) {
  const request = JSON.parse(input || "{}");
  try {
    if (request.add) {
      const { name, url } = request.add;
      if (typeof name !== "string" || typeof url !== "string") {
        throw "add needs a name and a url";
      }
      put(`bookmark/${name}`, encoder.encode(url));
      console.log(`added ${name}`);
    }
    const bookmarks = listKeys("bookmark/").map((key) => ({
      name: key.slice("bookmark/".length),
      url: decoder.decode(get(key)),
    }));
    return JSON.stringify({ bookmarks });
  } catch (e) {
    throw typeof e === "string" ? e : explain(e);
  }
}
