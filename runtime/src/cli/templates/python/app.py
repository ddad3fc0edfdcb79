"""{name}: an Airlock skill.

Input: JSON text, for example {"key": "greeting"}. Output: JSON text.
Every capability call (http, storage, secrets, tools) is decided by the
host's broker; a denial raises Err(Error_Denied(...)) naming the action,
the resource and the deciding policies. print() output becomes log lines.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, storage
from wit_world.imports.types import Error_Denied


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        request = json.loads(input or "{}")
        key = request.get("key", "greeting")
        print(f"looking up {key}")
        try:
            value = storage.get(key)
        except Err as e:
            if isinstance(e.value, Error_Denied):
                # A denial is an ordinary error: say what the broker said.
                raise Err(f"not allowed: {e.value.value}")
            raise Err(f"storage failed: {e.value}")
        log.emit(log.Level.INFO, f"read {key}")
        return json.dumps({"key": key, "value": value.decode() if value else None})
