"""Checkpoints hold tensors in safetensors and the rest in JSON: every state a resume needs comes back bit for bit
with its types, a pair that does not belong together is refused in one line, and no file a loader might read can
run code (a planted pickle payload never runs). Stage II's planted checkpoints: tests/test_tuning.py."""

from __future__ import annotations

import hashlib
import json
import random
import shutil

import numpy as np
import pytest
import torch

from resa_interp.checkpoints import STATE, TENSORS, load_state, save_state
from resa_interp.errors import ResaError
from resa_interp.sae import train_saes
from resa_interp.sae.optimizers import Signum


def same(a, b) -> bool:
    """Equal values of the same types, tensors and arrays bit for bit with the same dtype."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN equals NaN here


def trained(optimizer_cls, steps: int = 3) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]
    optimizer = optimizer_cls(params, lr=1e-2)
    for _ in range(steps):
        sum((p**2).sum() for p in params).backward()
        optimizer.step()
        optimizer.zero_grad()
    return params, optimizer


def one_more_step(params, optimizer) -> list[torch.Tensor]:
    sum((p**3).sum() for p in params).backward()
    optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("optimizer_cls", [torch.optim.Adam, Signum])
def test_optimizer_and_rng_states_round_trip_and_continue_identically(optimizer_cls, tmp_path):
    params, optimizer = trained(optimizer_cls)
    module = torch.nn.Linear(3, 2)
    module.register_buffer("flag", torch.tensor(True))
    module.register_buffer("count", torch.tensor(7, dtype=torch.long))
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    state = {
        "optimizer": optimizer.state_dict(),
        "module": dict(module.state_dict()),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "done": {3: 0.25, 1: float("nan")},
        "group": [1, 3],
        "pending": torch.randn(5, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16),
        "nothing": None,
    }
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert same(loaded, state)
    index = json.loads((tmp_path / STATE).read_text())["tensors"]
    assert "optimizer.state.0." + ("exp_avg" if optimizer_cls is torch.optim.Adam else "momentum") in index

    # continuing from the loaded state gives what continuing the original gives
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = optimizer_cls(copies, lr=1e-2)
    resumed.load_state_dict(loaded["optimizer"])
    assert all(torch.equal(a, b) for a, b in zip(one_more_step(params, optimizer), one_more_step(copies, resumed),
                                                 strict=True))
    draws = random.random(), np.random.standard_normal(3), torch.rand(3)
    random.setstate(loaded["python"]), np.random.set_state(loaded["numpy"]), torch.set_rng_state(loaded["torch"])
    again = random.random(), np.random.standard_normal(3), torch.rand(3)
    assert draws[0] == again[0] and np.array_equal(draws[1], again[1]) and torch.equal(draws[2], again[2])


def test_corrupted_or_mismatched_pairs_are_refused_in_one_line(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_state(a, {"w": torch.zeros(3)})
    save_state(b, {"w": torch.ones(3)})

    def refused(folder, match: str) -> None:
        with pytest.raises(ResaError, match=match) as err:
            load_state(folder)
        assert "\n" not in str(err.value)

    shutil.copy(b / TENSORS, a / TENSORS)  # the other run's tensors beside this JSON
    refused(a, "SHA-256 differs")
    save_state(a, {"w": torch.zeros(3)})
    (a / TENSORS).write_bytes((a / TENSORS).read_bytes()[:-4] + b"\xff\xff\xff\xff")  # flipped bits
    refused(a, "SHA-256 differs")
    (a / STATE).write_text((a / STATE).read_text()[:-10])
    refused(a, "is not JSON")
    (a / TENSORS).unlink()
    refused(a, "incomplete")
    record = json.loads((b / STATE).read_text())
    (b / STATE).write_text(json.dumps({**record, "tensors": ["v"], "state": {"w": {"__tensor__": "v"}}}))
    refused(b, "other tensors")
    garbage = b"not a safetensors file"
    (b / TENSORS).write_bytes(garbage)
    (b / STATE).write_text(json.dumps({**record, "tensors_sha256": hashlib.sha256(garbage).hexdigest()}))
    refused(b, "not a safetensors file")


def test_stage_one_refuses_planted_pickles_without_running_them(tiny_qwen2, tiny_train_config, tmp_path,
                                                                pickle_payload, cli):
    marker = tmp_path / "pwned"
    payload = pickle_payload(marker)
    run = tmp_path / "run"
    args = ["train-saes", "--model", tiny_qwen2, "--layers", "1", "--tokens", "1024", "--out", str(run), "--resume"]

    old = run / "saes" / ".checkpoint.pt"  # where older versions pickled the checkpoint
    old.parent.mkdir(parents=True)
    old.write_bytes(payload)
    code, _, err = cli(args)
    assert code == 2 and "pickled checkpoints are not read" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ResaError, match="pickled checkpoints are not read"):  # also without --resume
        train_saes(tiny_train_config(layers="1"), run)
    old.unlink()

    folder = run / "saes" / ".checkpoint-0"  # the payload as each file the loader reads
    for planted in (STATE, TENSORS):
        save_state(folder, {"cfg_hash": "x"})
        (folder / planted).write_bytes(payload)
        code, _, err = cli(args)
        assert code == 2 and str(folder) in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists()
