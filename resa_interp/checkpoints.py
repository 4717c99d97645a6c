"""Checkpoints that cannot run code: tensors in a safetensors file, everything else in JSON beside it.

A state is any tree of dicts, lists, tuples, numbers, strings, None, torch tensors and numpy arrays (module and
optimizer state dicts, RNG states, counters). `save_state` writes it as FOLDER/state.json +
FOLDER/tensors.safetensors: each tensor becomes a `{"__tensor__": key}` leaf whose key is its path in the tree
(`saes.3.optimizer.state.0.exp_avg`), tuples and dicts with other than string keys keep their types
(`{"__tuple__": [...]}`, `{"__items__": [[k, v], ...]}`), and the JSON names the SHA-256 of the tensors file, so
that a pair that does not belong together is refused. Write the folder with `runs.atomic_dir`, so that a crash
never leaves half a pair. Reading uses only `json` and safetensors; neither can execute anything (unlike pickles,
which `torch.load(..., weights_only=False)` runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from resa_interp.errors import ResaError
from resa_interp.runs import sha256_file

STATE = "state.json"
TENSORS = "tensors.safetensors"
FORMAT = "resa-interp checkpoint 1"
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


def save_state(folder: str | Path, state: Any) -> Path:
    """Write `state` as `folder`/state.json + `folder`/tensors.safetensors (not atomic by itself: write into the
    temporary folder of `runs.atomic_dir`). Returns `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, (), tensors)
    save_file(tensors, str(folder / TENSORS))
    record = {"format": FORMAT, "tensors_sha256": sha256_file(folder / TENSORS), "tensors": sorted(tensors),
              "state": tree}
    (folder / STATE).write_text(json.dumps(record) + "\n")
    return folder


def load_state(folder: str | Path) -> Any:
    """The state `save_state` wrote into `folder` (tensors on the CPU); a missing, corrupted or mismatched pair is
    refused in one line."""
    folder = Path(folder)
    where = f"checkpoint {folder}"
    for name in (STATE, TENSORS):
        if not (folder / name).is_file():
            raise ResaError(f"{where} is incomplete (no {name}); delete it to start over")
    try:
        record = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResaError(f"{where}: {STATE} is not JSON ({err}); delete it to start over") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ResaError(f"{where}: {STATE} is not a {FORMAT!r} file; delete it to start over")
    if record.get("tensors_sha256") != sha256_file(folder / TENSORS):
        raise ResaError(f"{where}: {TENSORS} is not the file {STATE} was written with (SHA-256 differs), a corrupted "
                        f"or mismatched pair; delete it to start over")
    try:
        tensors = load_file(str(folder / TENSORS), device="cpu")
    except SafetensorError as err:
        raise ResaError(f"{where}: {TENSORS} is not a safetensors file ({err}); delete it to start over") from None
    if sorted(tensors) != record.get("tensors"):
        raise ResaError(f"{where}: {TENSORS} holds other tensors than {STATE} names; delete it to start over")
    try:
        return _decode(record["state"], tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise ResaError(f"{where}: {STATE} is malformed ({err!r}); delete it to start over") from None


def refuse_pickled(path: str | Path, remedy: str) -> None:
    """Refuse, in one line, a pickled checkpoint of an older version found at `path`, without opening it."""
    if Path(path).exists():
        raise ResaError(f"{path} is a pickled checkpoint of an older resa-interp; pickled checkpoints are not read "
                        f"(loading one can run any code it holds): {remedy}")


def _encode(obj: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for `obj`; its tensors and numpy arrays go into `tensors` under their path in the tree."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        key = ".".join(path)
        if key in tensors:
            raise ValueError(f"two tensors of the checkpoint share the name {key!r}")
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj.detach().cpu().contiguous()
            return {"__tensor__": key}
        array = np.ascontiguousarray(obj)  # stored bit for bit as signed integers of the same width
        tensors[key] = torch.from_numpy(array.view(f"i{array.dtype.itemsize}"))
        return {"__ndarray__": key, "dtype": array.dtype.str}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, (*path, k), tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, (*path, "key"), tensors), _encode(v, (*path, str(k)), tensors)]
                              for k, v in obj.items()]}
    raise TypeError(f"checkpoint value at {'.'.join(path) or 'the top'} is a {type(obj).__name__}, which is not saved")


def _decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_encode`."""
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    marker = next((m for m in _MARKERS if m in tree), None)
    if marker == "__tensor__":
        return tensors[tree["__tensor__"]]
    if marker == "__ndarray__":
        return tensors[tree["__ndarray__"]].numpy().view(np.dtype(tree["dtype"]))
    if marker == "__tuple__":
        return tuple(_decode(v, tensors) for v in tree["__tuple__"])
    if marker == "__items__":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in tree["__items__"]}
    return {k: _decode(v, tensors) for k, v in tree.items()}
