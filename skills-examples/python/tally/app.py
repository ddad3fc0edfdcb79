"""tally: counts the words of each text it is given, across runs.

Input: {"text": "..."}. Output: {"words": N, "top": [[word, total], ...]}:
the five words seen most often so far, in this and earlier runs. Totals
live in storage under `count/<word>`; every read and write is decided by
the broker, and a denial is raised as Err(Error_Denied(...)).
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import storage
from wit_world.imports.types import Error_Denied


def total(word: str) -> int:
    value = storage.get(f"count/{word}")
    return int(value.decode()) if value else 0


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        text = json.loads(input or "{}").get("text", "")
        words = re.findall(r"[a-z']+", text.lower())
        print(f"tallying {len(words)} words")
        try:
            for word in set(words):
                count = total(word) + words.count(word)
                storage.put(f"count/{word}", str(count).encode())
            known = [key.removeprefix("count/") for key in storage.list_keys("count/")]
            top = sorted(((w, total(w)) for w in known), key=lambda p: (-p[1], p[0]))[:5]
        except Err as e:
            if isinstance(e.value, Error_Denied):
                raise Err(f"not allowed: {e.value.value}")
            raise Err(f"storage failed: {e.value}")
        return json.dumps({"words": len(words), "top": top})
