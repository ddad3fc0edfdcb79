"""probe: makes the capability calls its input lists and reports each.

The Python twin of the Rust capability probe (skills-examples/hostile/
capability-probe): the same input and the same output, so a test can send
one list of calls to the Rust, Python and JavaScript probes and expect the
same answers. It touches every interface of the world.

Input: {"calls": [{"op": "storage.get", "key": "a"}, ...]}. Operations:
http.fetch (method, url, headers, body, credential), storage.get|put|
delete|list (key, value, prefix), secrets.mint (name, audience),
tools.invoke (name, input), log (level, message), print (message, to
stdout), fail (message: end the run with this error).
Each result is {"ok": ...} or {"error": kind, "message": text}.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import http, log, secrets, storage, tools
from wit_world.imports.types import (
    Error_Denied,
    Error_Invalid,
    Error_Limit,
    Error_NotFound,
    Error_Unavailable,
)

KINDS = {
    Error_Denied: "denied",
    Error_Invalid: "invalid",
    Error_Limit: "limit",
    Error_NotFound: "not-found",
    Error_Unavailable: "unavailable",
}

LEVELS = {
    "debug": log.Level.DEBUG,
    "warn": log.Level.WARN,
    "error": log.Level.ERROR,
}


def text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def call(c: dict):
    op = c.get("op", "")
    if op == "http.fetch":
        request = http.Request(
            method=c.get("method") or "GET",
            url=c.get("url", ""),
            headers=[(name, value) for name, value in c.get("headers", [])],
            body=c.get("body", "").encode(),
            credential=c.get("credential"),
        )
        r = http.fetch(request)
        return {
            "status": r.status,
            "headers": [[name, value] for name, value in r.headers],
            "body": text(r.body),
        }
    if op == "storage.get":
        value = storage.get(c.get("key", ""))
        return None if value is None else text(value)
    if op == "storage.put":
        storage.put(c.get("key", ""), c.get("value", "").encode())
        return None
    if op == "storage.delete":
        return storage.delete(c.get("key", ""))
    if op == "storage.list":
        return storage.list_keys(c.get("prefix", ""))
    if op == "secrets.mint":
        return secrets.mint_token(c.get("name", ""), c.get("audience", ""))
    if op == "tools.invoke":
        return tools.invoke(c.get("name", ""), c.get("input", ""))
    if op == "log":
        log.emit(LEVELS.get(c.get("level", ""), log.Level.INFO), c.get("message", ""))
        return None
    if op == "print":
        print(c.get("message", ""))
        return None
    raise LookupError(f"unknown op `{op}`")


def report(c: dict) -> dict:
    try:
        return {"ok": call(c)}
    except Err as e:
        return {"error": KINDS[type(e.value)], "message": e.value.value}
    except LookupError as e:
        return {"error": "probe", "message": str(e)}


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        try:
            calls = json.loads(input)["calls"]
        except (ValueError, KeyError, TypeError) as e:
            raise Err(f"bad probe input: {e}")
        results = []
        for c in calls:
            if c.get("op") == "fail":
                raise Err(c.get("message", ""))
            results.append(report(c))
        return json.dumps({"results": results})
