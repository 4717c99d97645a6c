"""CUDA smoke check of the tiny-model paths: bf16 model on the GPU, Stage I, features (clean and spliced),
Stage II. Not a test (CI has no GPU); run it on a CUDA machine:

    python scripts/gpu_smoke.py [--out /tmp/resa-gpu-smoke]

Each step asserts what must hold on the GPU (device placement, dtypes, finite and sensible numbers) and
prints one line with its timing; the script exits non-zero at the first failure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def step(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            note = result if isinstance(result, str) else (result[1] if isinstance(result, tuple) else "")
            print(f"ok  {name:<28} {time.perf_counter() - start:6.1f} s  {note}")
            return result

        return run

    return wrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/resa-gpu-smoke")
    parser.add_argument("--device", default="cuda", help="cuda (the point); cpu only to dry-run the script")
    args = parser.parse_args()
    device = args.device
    assert device == "cpu" or torch.cuda.is_available(), "no CUDA device"
    out = Path(args.out)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}")

    from resa_interp.model.subject import load_subject
    from resa_interp.model.tiny import build_tiny_model

    model_dir = build_tiny_model(out / "tiny-qwen2", "qwen2")

    @step("load bf16")
    def load():
        subject = load_subject(str(model_dir), dtype="bfloat16", device=device)
        assert subject.device.type == device and subject.dtype == torch.bfloat16
        ids = torch.tensor([subject.tokenizer("a <think> b </think> c")["input_ids"]], device=device)
        with torch.no_grad():
            hf, tl = subject.hf(ids).logits.float(), subject.hooked(ids).float()
        assert next(subject.hooked.parameters()).device.type == device
        diff = (hf - tl).abs().max().item()
        assert diff < 0.1 * hf.abs().max().item(), diff
        return subject, f"HF vs HookedTransformer max |dlogit| {diff:.3g} (bf16)"

    subject, _ = load()

    @step("Stage I")
    def stage_one():
        from resa_interp.sae import SAETrainConfig, train_saes

        cfg = SAETrainConfig(model=str(model_dir), layers="1,2", expansion_factor=4, k=8, tokens=8192,
                             batch_tokens=512, buffer_tokens=2048, heldout=4, n_examples=120, lr=3e-3,
                             device=device, model_dtype="bfloat16")
        result = train_saes(cfg, out / "run", subject=subject)
        evs = [round(row["explained_variance"], 3) for row in result.metrics]
        assert all(0.5 < ev <= 1 for ev in evs), evs
        meta = json.loads((result.sae_dirs[1] / "cfg.json").read_text())["metadata"]
        assert meta["select_precision"] == "auto"
        return f"EV {evs}"

    stage_one()

    @step("features clean + spliced")
    def features():
        from resa_interp.features import FeatureConfig, run_features

        for spliced in (False, True):
            cfg = FeatureConfig(spliced=spliced, prompts=("x <think> y </think> z <think> w </think> v",), layers="1,2")
            result = run_features(cfg, out / "run", subject=subject)
            assert [layer.layer for layer in result.layers] == [1, 2]
        return f"counts {[layer.count for layer in result.layers]}"

    features()

    @step("Stage II tune bf16")
    def stage_two():
        from resa_interp.tuning import TuneConfig, tune

        cfg = TuneConfig(model=str(model_dir), saes_run=str(out / "run"), layer=2, steps=6, lr=1e-3, limit=8,
                         save_every=None, device=device, dtype="bfloat16")
        result = tune(cfg, out / "tuned")
        assert torch.isfinite(torch.tensor([result.first, result.last])).all()
        from safetensors import safe_open

        keys = set()
        for file in (result.merged).glob("*.safetensors"):
            with safe_open(str(file), "pt") as handle:
                keys |= set(handle.keys())
        assert keys == set(subject.hf.state_dict()) - {"lm_head.weight"} or keys == set(subject.hf.state_dict())
        return f"KL {result.first:.4g} -> {result.last:.4g} in {result.steps} steps"

    stage_two()
    print("GPU smoke: all steps passed")


if __name__ == "__main__":
    main()
