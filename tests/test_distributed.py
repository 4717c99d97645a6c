"""Stage I across launcher ranks: two gloo processes under torchrun on the CPU train the SAEs one process trains,
bit for bit; checkpoints hold every rank's state and resume under the same number of ranks; a rank that stops
answering fails the run in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resa_interp.errors import ResaError
from resa_interp.sae import SAETrainConfig, train_saes

CFG = dict(tokens=None, buffer_tokens=512, seq_batch=4, n_examples=29, layers="1,2,3", seeds=[1], checkpoint_every=1)
"""Over the shared tiny settings (`tiny_train_settings`): three layers over two ranks (1 and 3 on rank 0, 2 on rank
1), two seeds, a checkpoint after every flush, one epoch over 25 texts: the last batch has one row, so rank 1's slice
of it is empty."""

RUNNER = """
import json, logging, sys
from resa_interp.errors import ResaError
from resa_interp.sae import SAETrainConfig, train_saes
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")  # the library logs its plan
try:
    train_saes(SAETrainConfig(**json.loads(sys.argv[1])), sys.argv[2])
except ResaError as exc:  # as the CLI reports it
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(cfg: dict, out: Path, timeout: int = 120) -> subprocess.Popen:
    """`torchrun --nproc-per-node 2` of train_saes(cfg, out) (gloo on the CPU), collectives waiting `timeout` s."""
    script = out.parent / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "RESA_DIST_TIMEOUT": str(timeout)}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), str(script), json.dumps(cfg), str(out)],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _saes(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    found = {str(p.parent.relative_to(run)): load_file(p) for p in (run / "saes").rglob("sae_weights.safetensors")}
    assert len(found) == 6, sorted(found)  # 3 layers x 2 seeds
    return found


@pytest.fixture(scope="module")
def one_process(tiny_train_config, tmp_path_factory) -> Path:
    """The reference: the same config in one process."""
    run = tmp_path_factory.mktemp("one") / "run"
    torch.set_num_threads(1)  # as torchrun sets OMP_NUM_THREADS for its ranks
    try:
        train_saes(tiny_train_config(**CFG), run)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return run


def test_two_ranks_train_the_saes_of_one_process(tiny_train_settings, one_process, tmp_path):
    run = tmp_path / "run"
    proc = _torchrun(tiny_train_settings(**CFG), run)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    reference, spread = _saes(one_process), _saes(run)
    for name, weights in reference.items():
        assert all(torch.equal(weights[key], spread[name][key]) for key in weights), name
    record = json.loads((run / "manifest.json").read_text())["stages"]["train-saes"]
    assert record["world_size"] == 2 and record["rank_of_layer"] == {"1": 0, "2": 1, "3": 0}
    single = json.loads((one_process / "manifest.json").read_text())["stages"]["train-saes"]
    assert single["world_size"] == 1 and single["rank_of_layer"] == {"1": 0, "2": 0, "3": 0}
    assert json.loads((run / "saes" / "metrics.json").read_text()) == \
        json.loads((one_process / "saes" / "metrics.json").read_text())
    assert out.count("memory plan") == 1  # rank 0 alone logs
    assert not list((run / "saes").glob(".checkpoint*"))


def _rank_pids(launcher: int) -> dict[int, int]:
    """Rank -> pid of the launcher's worker processes (their RANK variable)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0") if ppid == launcher else []
        except (OSError, ValueError, IndexError):
            continue
        ranks = [item[5:] for item in env if item.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0])] = int(stat.parent.name)
    return found


def test_a_silent_rank_fails_the_run_in_one_line_and_the_ranks_resume(tiny_train_settings, one_process, tmp_path):
    """Rank 1 stops answering (SIGSTOP) after the first checkpoint: rank 0 ends the run with one line once the
    collective times out (RESA_DIST_TIMEOUT); a single process refuses that checkpoint; two ranks resume it and
    end with the SAEs of one uninterrupted process. (A rank killed outright is reported by torchrun itself, which
    then stops the others: 'Root Cause ... rank 1 ... SIGKILL'.)"""
    run, cfg = tmp_path / "run", tiny_train_settings(**CFG)
    proc = _torchrun(cfg, run, timeout=15)
    deadline = time.time() + 240
    while not list((run / "saes").glob(".checkpoint-[0-9]")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    checkpoint = next((run / "saes").glob(".checkpoint-[0-9]"), None)
    assert checkpoint is not None, "no checkpoint before the run ended"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["rank-0", "rank-1"]
    ranks = _rank_pids(proc.pid)
    os.kill(ranks[1], signal.SIGSTOP)
    try:
        while _alive(ranks[0]) and time.time() < deadline:
            time.sleep(0.1)
    finally:
        os.kill(ranks[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "rank 0/2: another rank died or stopped answering while" in lines[0], err[-3000:]
    assert not (run / "manifest.json").exists()
    with pytest.raises(ResaError, match="written by 2 launcher ranks, this is one process: resume it with "
                                        "--nproc-per-node 2"):
        train_saes(SAETrainConfig(**cfg), run)
    resumed = _torchrun(cfg, run)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    reference, spread = _saes(one_process), _saes(run)
    for name, weights in reference.items():
        assert all(torch.equal(weights[key], spread[name][key]) for key in weights), name


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by the launcher, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
