// {name}: an Airlock skill.
//
// Input: JSON text, for example {"key": "greeting"}. Output: JSON text.
// Every capability call (http, storage, secrets, tools) is decided by the
// host's broker; a denial is thrown as an error whose payload is
// { tag: "denied", val: "...action, resource and deciding policies..." }.
// console.log output becomes log lines.

import { get } from "airlock:skill/storage@0.1.0";
import { emit } from "airlock:skill/log@0.1.0";

export function run(input) {
  const request = JSON.parse(input || "{}");
  const key = request.key ?? "greeting";
  console.log(`looking up ${key}`);
  let value;
  try {
    value = get(key);
  } catch (e) {
    const error = e.payload ?? e;
    if (error.tag === "denied") {
      // A denial is an ordinary error: say what the broker said.
      throw `not allowed: ${error.val}`;
    }
    throw `storage failed: ${JSON.stringify(error)}`;
  }
  emit("info", `read ${key}`);
  return JSON.stringify({ key, value: value ? new TextDecoder().decode(value) : null });
}
