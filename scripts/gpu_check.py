"""One-call GPU check at the paper's shapes: the fused TopK step against sparsify (its Triton decoder), Stage I at
26 layers with the memory plan against the allocator's peak, one SAE-Tuning step with and without the splice, and
`torchrun --nproc-per-node 1` with NCCL; every number in one JSON file. Not a test (CI has no GPU).

    python scripts/gpu_check.py [--out gpu_check.json] [--budget-s 420]      # on a CUDA machine (one H200: < 8 min)
    python scripts/gpu_check.py --dry-run-cpu --out /tmp/check.json          # every part at tiny shapes on the CPU

The model is a random-weight Qwen2 of DeepSeek-R1-Distill-Qwen-1.5B's config (`R1_DISTILL_QWEN_1_5B`, built by
transformers from the config, no hub) with the tiny models' small tokenizer: a step's cost does not depend on the
weights' values. Each part is timed and recorded with `ok` and, when it fails, its `error`, so one failing part
loses none of the others; the JSON is written atomically after every part. Without CUDA (and without
`--dry-run-cpu`) it refuses in one line with exit code 2. `scripts/gpu_smoke.py` checks the tiny-model paths on a
GPU; the docs' performance page ("GPU check") has the wheels to carry and the one `run` command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
"""The checkout: its `resa_interp` and `benchmarks/` are imported from here, installed or not."""

R1_DISTILL_QWEN_1_5B = {
    "model_type": "qwen2",
    "hidden_size": 1536,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "intermediate_size": 8960,
    "vocab_size": 151_936,
    "max_position_embeddings": 131_072,
    "rope_theta": 10_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "use_sliding_window": False,
}
"""config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B on the hub (the fields that set its shape and numerics;
the same 28 x 1536 / 8960 / 12 heads, 2 kv heads / 151,936 as `benchmarks/scaling_plan.py`'s MODELS row)."""

TINY_QWEN2 = {**R1_DISTILL_QWEN_1_5B, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 1024, "max_position_embeddings": 512}
"""The dry run's model: the same config at tiny sizes."""


@dataclass(frozen=True)
class Shapes:
    """Sizes of every part: the paper's on a GPU, tiny ones for the CPU dry run."""

    model: dict
    """HF config of the random model."""
    latents: int
    """SAE width of the step comparison and the SAE-Tuning step."""
    k: int
    step_tokens: int
    """Tokens per SAE step in the step comparison."""
    step_rounds: int
    """Timed rounds of the interleaved step comparison."""
    stage1: dict
    """`SAETrainConfig.from_options(preset='paper', ...)` overrides beside the model, device and data."""
    tune_layer: int
    tune_steps: int


PAPER = Shapes(R1_DISTILL_QWEN_1_5B, 65_536, 32, 16_384, 10,
               {"layers": "1-26", "tokens": 131_072}, tune_layer=12, tune_steps=5)
"""Stage I: `--preset paper` (65,536 latents, k 32, Signum, batch 16 x 2,048 packed tokens, 131,072-token buffers)
for four optimizer steps per SAE."""
TINY = Shapes(TINY_QWEN2, 512, 8, 256, 3,
              {"layers": "1-3", "tokens": 1024, "latents": 256, "k": 8, "batch_tokens": 512, "buffer_tokens": 1024,
               "max_seq_len": 128, "seq_batch": 4, "heldout": 4}, tune_layer=1, tune_steps=2)


@dataclass
class Check:
    """What the parts share: the device, the sizes, a scratch folder and the random model once it is built."""

    device: str
    shapes: Shapes
    work: Path
    budget_s: float
    started: float = dataclasses.field(default_factory=time.perf_counter)
    model_dir: Path | None = None

    def sync(self) -> None:
        """Wait for the device (timings around GPU work)."""
        if self.device == "cuda":
            torch.cuda.synchronize()

    def left_s(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.perf_counter() - self.started)

    def model(self) -> Path:
        """The random model's folder (the `model` part builds it)."""
        if self.model_dir is None:
            raise RuntimeError("no random model: the model part did not build one")
        return self.model_dir


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def part_env(check: Check) -> dict:
    """Versions of what the check runs on, and the GPU."""
    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             **{name: _version(name) for name in ("eai-sparsify", "triton", "transformers", "sae-lens", "peft",
                                                  "accelerate", "safetensors")}}
    if check.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        found.update(gpu=props.name, gpu_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}",
                     multiprocessors=props.multi_processor_count, nccl=".".join(map(str, torch.cuda.nccl.version())))
    return found


def part_model(check: Check) -> dict:
    """Build the random model from its config (on the device, in bf16) and save it for the parts that load it."""
    from resa_interp.model import build_random_model

    check.model_dir = build_random_model(check.work / "model", check.shapes.model, device=check.device)
    from safetensors import safe_open

    files = list(check.model_dir.glob("*.safetensors"))
    params = 0
    for file in files:
        with safe_open(str(file), "pt") as handle:
            params += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118
    _free()
    return {"config": check.shapes.model, "parameters": params, "bytes_on_disk": sum(f.stat().st_size for f in files)}


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def part_sae_step(check: Check) -> dict:
    """The fused TopK step against sparsify's on the same activations, interleaved (`bench_sae_train`), with the
    bf16 encoder product of the same shape as the yardstick; medians, tok/s and ratios to sparsify."""
    from benchmarks.bench_sae_train import activations, interleaved_medians, matmul_fn, ours_step_fn, sparsify_step_fn

    s = check.shapes
    d_in, lr = s.model["hidden_size"], 2.5e-4
    data = activations(2 * s.step_tokens, d_in).to(check.device)
    batches = list(data.split(s.step_tokens))
    makers: dict[str, Callable[[], Callable]] = {
        "sparsify fp32": lambda: sparsify_step_fn(d_in, s.latents, s.k, lr, check.device),
        "sparsify bf16 autocast": lambda: sparsify_step_fn(d_in, s.latents, s.k, lr, check.device, torch.bfloat16),
        "resa fp32 select": lambda: ours_step_fn(d_in, s.latents, s.k, lr, None, data),
        "resa bf16 select": lambda: ours_step_fn(d_in, s.latents, s.k, lr, torch.bfloat16, data),
        "encoder matmul bf16": lambda: matmul_fn(d_in, s.latents, torch.bfloat16, check.device),
    }
    trainers, errors = {}, {}
    for name, make in makers.items():  # a variant that cannot run here is recorded and left out
        try:
            step = make()
            step(batches[0])
            trainers[name] = step
        except Exception as exc:  # noqa: BLE001 - any failure of one variant is a result to record
            errors[name] = _one_line(exc)
    medians = interleaved_medians(trainers, batches, s.step_rounds, check.sync)
    import sparsify.utils

    base = medians.get("sparsify fp32")
    rows = {name: {"median_s": med, "tokens_per_s": s.step_tokens / med,
                   "x_sparsify_fp32": base / med if base else None} for name, med in medians.items()}
    matmul = medians.get("encoder matmul bf16")
    for name in ("resa fp32 select", "resa bf16 select"):
        if name in rows and matmul:
            rows[name]["fraction_of_bf16_matmul"] = matmul / medians[name]
    trainers.clear()  # their SAEs and optimizer states
    _free()
    return {"d_in": d_in, "latents": s.latents, "k": s.k, "batch_tokens": s.step_tokens, "rounds": s.step_rounds,
            "sparsify_decoder": sparsify.utils.decoder_impl.__name__, "steps": rows, "errors": errors}


def part_stage1(check: Check) -> dict:
    """Stage I through `train_saes` (`--preset paper` on the random model, synthetic data, a small token budget):
    the memory plan's bytes next to `torch.cuda.max_memory_allocated` above the loaded model."""
    from resa_interp.model import load_subject
    from resa_interp.sae import SAETrainConfig, plan_stage1, train_saes

    model = str(check.model())
    cfg = SAETrainConfig.from_options(preset="paper", model=model, dataset="synthetic", device=check.device,
                                      checkpoint_every=0, **check.shapes.stage1)
    subject = load_subject(model, dtype=cfg.model_dtype, device=check.device)
    run = check.work / "stage1"
    plan = plan_stage1(cfg, run)
    cuda = check.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model_bytes = torch.cuda.memory_allocated() if cuda else None
    start = time.perf_counter()
    result = train_saes(cfg, run, subject=subject)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else None
    found = {
        "layers": plan.layers, "latents": plan.d_sae, "k": plan.k, "tokens_per_sae": result.tokens_per_layer,
        "batch_tokens": cfg.batch_tokens, "wall_s": wall, "train_s": result.train_seconds,
        "train_tokens_per_s": result.tokens_per_layer * len(plan.layers) / max(result.train_seconds, 1e-9),
        "explained_variance": [round(row["explained_variance"], 4) for row in result.metrics],
        "plan": plan.memory.describe(len(plan.layers)), "plan_group_size": plan.memory.group_size,
        "plan_bytes": plan.memory.total, "model_bytes": model_bytes, "peak_allocated_bytes": peak,
        "peak_above_model_bytes": None if peak is None else peak - model_bytes,
    }
    if peak is not None:
        found["measured_over_plan"] = (peak - model_bytes) / plan.memory.total
    del subject, result
    _free()
    import shutil

    shutil.rmtree(run, ignore_errors=True)  # 26 SAEs of 65,536 latents are 21 GB on disk
    return found


def part_tuning(check: Check) -> dict:
    """One SAE-Tuning optimizer step with the SAE spliced and without, alternating (`bench_tuning.splice_cost`)."""
    from benchmarks.bench_tuning import splice_cost

    s = check.shapes
    cost = splice_cost(str(check.model()), s.tune_layer, d_sae=s.latents, k=s.k, steps=s.tune_steps, warmup=1,
                       limit=8, device=check.device)
    _free()
    return cost


def part_torchrun(check: Check) -> dict:
    """`torchrun --nproc-per-node 1` of this script's rank job (NCCL on a GPU, gloo on the CPU): the launcher's
    environment, the process group, an all_reduce, the ranks' activation exchange and a tiny Stage I."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(Path(__file__).resolve()), "--rank-job", str(check.work / "ranks"),
           "--device", check.device]
    timeout = max(60.0, check.left_s())
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"torchrun did not finish in {timeout:.0f} s") from exc
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    report = next((json.loads(line) for line in reversed(proc.stdout.splitlines()) if line.startswith("{")), None)
    if proc.returncode != 0 or report is None:
        raise RuntimeError(f"torchrun exit {proc.returncode}: {' | '.join(lines[-3:])[-400:]}")
    return {"rc": proc.returncode, "last_lines": lines[-3:], **report}


def rank_job(run: Path, device: str) -> None:
    """One rank under torchrun: join the process group (NCCL for CUDA), all_reduce, send activations through
    `sae.ranks.exchange`, train a tiny Stage I inside the group; prints one JSON line."""
    import torch.distributed as dist

    from resa_interp.model import build_tiny_model
    from resa_interp.sae import SAETrainConfig, train_saes
    from resa_interp.sae.ranks import exchange
    from resa_interp.shards import launcher_shard

    local = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device == "cuda" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    try:
        shard = launcher_shard()
        total = torch.ones(1, device=local)
        dist.all_reduce(total)
        rows = torch.arange(12.0, device=local).reshape(3, 4)
        routed = exchange({1: rows}, [3], {1: 0}, shard)
        model = build_tiny_model(run / "tiny", "qwen2")
        cfg = SAETrainConfig(model=str(model), layers="1,2", expansion_factor=4, k=8, tokens=2048, batch_tokens=256,
                             buffer_tokens=1024, heldout=4, n_examples=60, lr=3e-3, device=local, checkpoint_every=0)
        result = train_saes(cfg, run / "stage1")
        print(json.dumps({"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                          "rank": shard.index, "all_reduce": total.item(),
                          "exchange_ok": bool(torch.equal(routed[1], rows)),
                          "explained_variance": [round(row["explained_variance"], 4) for row in result.metrics]}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


PARTS: list[tuple[str, Callable[[Check], dict]]] = [
    ("env", part_env),
    ("model", part_model),
    ("sae_step", part_sae_step),
    ("stage1", part_stage1),
    ("tuning", part_tuning),
    ("torchrun", part_torchrun),
]
"""The parts in the order they run; a part that fails is recorded and the next one runs."""


def run_check(check: Check, out: Path) -> dict:
    """Run every part of `PARTS`, writing `out` after each; the record."""
    from resa_interp.runs import atomic_write_json

    record = {"script": "scripts/gpu_check.py", "mode": "cuda" if check.device == "cuda" else "dry-run-cpu",
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": check.budget_s,
              "shapes": dataclasses.asdict(check.shapes), "parts": {}}
    for name, part in PARTS:
        if check.left_s() <= 0:
            record["parts"][name] = {"ok": False, "error": f"skipped: the budget of {check.budget_s:.0f} s was spent",
                                     "seconds": 0.0}
        else:
            start = time.perf_counter()
            try:
                entry = {"ok": True, **part(check)}
            except Exception as exc:  # noqa: BLE001 - a failing part is recorded; the others still run
                entry = {"ok": False, "error": _one_line(exc), "traceback": traceback.format_exc().splitlines()[-6:]}
            check.sync()
            entry["seconds"] = time.perf_counter() - start
            record["parts"][name] = entry
        record["wall_s"] = time.perf_counter() - check.started
        record["ok"] = all(entry["ok"] for entry in record["parts"].values())
        atomic_write_json(out, record)
        entry = record["parts"][name]
        print(f"{'ok ' if entry['ok'] else 'ERR'} {name:<9} {entry['seconds']:7.1f} s  {entry.get('error', '')}",
              flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON record")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds after which the parts not yet started are skipped (recorded as such)")
    parser.add_argument("--dry-run-cpu", action="store_true", help="every part at tiny shapes on the CPU")
    parser.add_argument("--rank-job", type=Path, help=argparse.SUPPRESS)  # the torchrun part's child
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.rank_job is not None:
        rank_job(args.rank_job, args.device)
        return 0
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print(f"error: gpu_check needs a CUDA device and torch {torch.__version__} sees none; --dry-run-cpu runs "
              "every part at tiny shapes on the CPU", file=sys.stderr)
        return 2
    device, shapes = ("cpu", TINY) if args.dry_run_cpu else ("cuda", PAPER)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        record = run_check(Check(device, shapes, Path(work), args.budget_s), args.out)
    print(f"{'all parts ok' if record['ok'] else 'some parts failed'}: {args.out} ({record['wall_s']:.0f} s)")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
