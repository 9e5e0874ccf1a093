"""A JSON patch (RFC 6902) between two objects, and its application: the admission webhook
answers with the patch from the labelled pod to the injected one."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def json_patch(old: Any, new: Any, path: str = "") -> list[Obj]:
    """A JSON patch from ``old`` to ``new``: maps key by key, lists item by item when their
    lengths match (else replaced whole), [] when equal."""
    if old == new and type(old) is type(new):
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        ops: list[Obj] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": _pointer(path, key)})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": _pointer(path, key), "value": copy.deepcopy(value)})
            else:
                ops += json_patch(old[key], value, _pointer(path, key))
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            op for i, (a, b) in enumerate(zip(old, new, strict=False)) for op in json_patch(a, b, _pointer(path, i))
        ]
    return [{"op": "replace", "path": path, "value": copy.deepcopy(new)}]


def apply_patch(obj: Any, patch: list[Obj]) -> Any:
    """Apply a patch made by :func:`json_patch` (add, remove, replace) to a copy of ``obj``:
    what the API server does with the webhook's answer, for tests and the benchmark."""
    result = copy.deepcopy(obj)
    for op in patch:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            result = copy.deepcopy(op["value"])
            continue
        parent = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
        if op["op"] == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(op["value"])
    return result


def dumps(patch: list[Obj]) -> bytes:
    return json.dumps(patch, separators=(",", ":")).encode()
