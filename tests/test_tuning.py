"""Stage II: SAE-Tuning on tiny models (and one short run on the embedded model).

What is checked against an independent computation: the SAE reads exactly the HookedTransformer activation
it was trained on; a perfectly reconstructing SAE gives KL 0; the KL and cross-entropy are the textbook
formulas; the merged weights are base + B @ A * alpha / r; resume reproduces an uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resa_interp.errors import ResaError
from resa_interp.model.hooks import hook_name
from resa_interp.model.subject import load_subject
from resa_interp.tuning import (
    SAETuner,
    StepRecord,
    TuneConfig,
    kl_per_token,
    next_token_loss,
    preset_config,
    reduce_kl,
    tune,
)
from resa_interp.tuning.teacher import model_key, sequence_key

D = 64  # tiny models' width


def save_topk_sae(path: Path, w_enc: torch.Tensor, w_dec: torch.Tensor, k: int, hook: str, *,
                  b_dec: torch.Tensor | None = None, source: str | None = None) -> str:
    """An SAELens TopK SAE with the given weights (d_in = rows of w_enc), saved as a folder."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = w_enc.shape
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=b_dec is not None,
                        metadata=SAEMetadata(hook_name=hook, model_name=source))
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.zero_()
        sae.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(d_in))
    sae.save_model(path)
    return str(path)


def perfect_sae(path: Path, hook: str, d: int = D) -> str:
    """W_enc = [I, -I], W_dec = [I; -I], k = d: relu(x) - relu(-x) = x, a lossless TopK SAE."""
    eye = torch.eye(d)
    return save_topk_sae(path, torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0), d, hook)


def random_sae(path: Path, hook: str, d: int = D, d_sae: int = 256, k: int = 4, seed: int = 0) -> str:
    """A poor SAE: random unit decoder rows, encoder their transpose, 4 active latents."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    return save_topk_sae(path, w_dec.T.contiguous(), w_dec, k, hook)


def tiny_config(model: str, sae: str | None, **kw) -> TuneConfig:
    values = dict(model=model, sae=sae, dataset="synthetic", limit=4, steps=8, lr=1e-3, save_every=None,
                  device="cpu", seed=0)
    values.update(kw)
    return TuneConfig(**values)


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    return {
        "perfect": perfect_sae(root / "perfect", hook_name("resid_post", 2)),
        "random": random_sae(root / "random", hook_name("resid_post", 1)),
        "random_mlp": random_sae(root / "random_mlp", hook_name("mlp_out", 2)),
    }


# ------------------------------------------------------------------------------------------ the losses


def test_kl_and_cross_entropy_match_the_textbook_formulas():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    p, q = teacher.softmax(-1), student.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1)
    kl = kl_per_token(teacher, student)
    assert torch.allclose(kl, expected, atol=1e-6)
    assert torch.allclose(reduce_kl(kl, "token"), expected.mean())
    assert torch.allclose(reduce_kl(kl, "batchmean"), expected.sum() / 2)
    assert kl_per_token(teacher, teacher).abs().max() < 1e-6
    ids = torch.randint(0, 11, (1, 5), generator=g)
    nll = -student[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).mean()
    assert torch.allclose(next_token_loss(student[:1], ids), nll, atol=1e-6)


# ------------------------------------------------------------------------------------------ the splice


@pytest.mark.parametrize("arch,which,hook,layer", [
    ("qwen2", "random", "resid_post", 1), ("qwen2", "random_mlp", "mlp_out", 2), ("llama", "random", "resid_post", 1)])
def test_sae_reads_the_hooked_transformer_activation(tiny_qwen2, tiny_llama, saes, arch, which, hook, layer):
    model = tiny_qwen2 if arch == "qwen2" else tiny_llama
    tuner = SAETuner(tiny_config(model, saes[which]))
    assert (tuner.choice.hook, tuner.choice.layer) == (hook, layer)
    read = []
    tuner.recon.register_forward_pre_hook(lambda _m, args: read.append(args[0].detach().clone()))
    tuner.train_step(0)
    ids = tuner.examples[tuner.schedule.indices(0, 0)[0]]
    _, cache = load_subject(model).hooked.run_with_cache(ids[None])
    expected = cache[hook_name(hook, layer)]
    assert len(read) == 1 and read[0].shape == expected.shape
    assert torch.allclose(read[0], expected, atol=1e-5), (read[0] - expected).abs().max()


def test_a_perfect_sae_gives_zero_kl_and_a_poor_one_does_not(tiny_qwen2, saes):
    perfect = SAETuner(tiny_config(tiny_qwen2, saes["perfect"], keep_first=0)).train_step(0)
    assert perfect.kl < 1e-9 and perfect.sae_mse < 1e-10
    poor = SAETuner(tiny_config(tiny_qwen2, saes["random"], keep_first=0)).train_step(0)
    assert poor.kl > 0.05 and poor.sae_mse > 0.01


def test_detach_sae_stops_gradients_before_the_hookpoint(tiny_qwen2, saes):
    def b_norms(detach: bool) -> list[float]:
        tuner = SAETuner(tiny_config(tiny_qwen2, saes["random"], detach_sae=detach))
        tuner.train_step(0)
        layers = tuner.model.base_model.model.model.layers
        return [float(layer.self_attn.q_proj.lora_B["default"].weight.detach().norm()) for layer in layers]

    detached, through = b_norms(True), b_norms(False)
    assert detached[0] == 0.0 and detached[1] == 0.0 and detached[2] > 0  # SAE after layer 1
    assert all(n > 0 for n in through)


# ------------------------------------------------------------------------------------------ a full run


@pytest.fixture(scope="module")
def run(tiny_qwen2, saes, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "run"
    config = tiny_config(tiny_qwen2, saes["random"], steps=40, save_every=20, lr=2e-3)
    return config, tune(config, out)


def test_kl_falls_over_steps(run):
    _, result = run
    kl = [r.kl for r in result.records]
    first_epoch, last_epoch = sum(kl[:4]) / 4, sum(kl[-4:]) / 4  # the same 4 examples, in shuffled order
    assert last_epoch < 0.5 * first_epoch, kl


def test_outputs_log_and_manifest(run, tiny_qwen2):
    config, result = run
    out = result.out
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 41))
    assert set(lines[0]) == {"step", "epoch", "kl", "sae_mse", "lr", "grad_norm", "tokens"}
    assert lines[0]["lr"] == pytest.approx(2e-3) and lines[-1]["lr"] < 2e-3 * 0.11  # cosine to min lr
    assert (out / "checkpoints" / "step-000020" / "state.json").is_file()
    stage = json.loads((out / "manifest.json").read_text())["stages"]["tune"]
    assert stage["target_model"] == tiny_qwen2 and stage["elicitation_dataset"] == "synthetic"
    assert stage["sae"]["hook_name"] == "blocks.1.hook_resid_post" and stage["source_model"] is None
    assert stage["tokens_seen"] == sum(line["tokens"] for line in lines) > 0
    assert stage["wall_s"] > 0 and stage["device"] == "cpu" and stage["steps"] == 40
    for written in ("adapter/adapter_model.safetensors", "merged/model.safetensors"):
        assert (out / written).stat().st_mode & 0o777 == 0o644, written


def test_merged_weights_are_base_plus_lora_delta(run, tiny_qwen2):
    config, result = run
    base = load_file(str(Path(tiny_qwen2) / "model.safetensors"))
    merged = load_file(str(result.merged / "model.safetensors"))
    lora = load_file(str(result.adapter / "adapter_model.safetensors"))
    assert set(merged) == set(base)
    scale = config.lora_alpha / config.lora_r
    adapted = set()
    for key in lora:
        if ".lora_A." in key:
            module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            a, b = lora[key], lora[key.replace("lora_A", "lora_B")]
            expected = base[f"{module}.weight"] + b @ a * scale
            assert torch.allclose(merged[f"{module}.weight"], expected, atol=1e-6)
            assert (b @ a).abs().max() > 0
            adapted.add(f"{module}.weight")
    assert len(adapted) == 4 * 4  # q, k, v, o in each of 4 layers
    for key in set(base) - adapted:
        assert torch.equal(merged[key], base[key]), key


def test_adapter_loads_with_peft_and_matches_the_merged_model(run, tiny_qwen2):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, result = run
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen2), str(result.adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.merged).eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged(ids).logits, atol=1e-4)


# ------------------------------------------------------------------------------------------ resume


def test_resume_equals_an_uninterrupted_run(tiny_qwen2, saes, tmp_path):
    config = tiny_config(tiny_qwen2, saes["random"], limit=6, steps=6, grad_accum=2, save_every=3)
    whole = tune(config, tmp_path / "whole")

    class Interrupt(Exception):
        pass

    def stop_after_four(record: StepRecord) -> None:
        if record.step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        tune(config, tmp_path / "parts", on_step=stop_after_four)
    assert len((tmp_path / "parts" / "train_log.jsonl").read_text().splitlines()) == 4
    resumed = tune(TuneConfig(**{**config.to_dict(), "resume": True}), tmp_path / "parts")

    assert (tmp_path / "parts" / "train_log.jsonl").read_text() == (tmp_path / "whole" / "train_log.jsonl").read_text()
    a = load_file(str(whole.adapter / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter / "adapter_model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.tokens == whole.tokens


def test_resume_refuses_planted_pickles_without_running_them(tiny_qwen2, saes, tmp_path, pickle_payload):
    """An old-format checkpoint (state.pt, rng-0.pt) and a pickle in place of any file the loader reads (the
    optimizer's or the RNG's JSON or safetensors) are refused in one line; the payload never runs."""
    marker = tmp_path / "pwned"
    payload = pickle_payload(marker)
    config = tiny_config(tiny_qwen2, saes["random"], limit=2, steps=2, save_every=1)
    whole = tune(config, tmp_path / "run")  # leaves checkpoints/step-000001
    step = whole.out / "checkpoints" / "step-000001"
    resume = TuneConfig(**{**config.to_dict(), "resume": True})
    for old in ("state.pt", "rng-0.pt"):
        (step / old).write_bytes(payload)
        with pytest.raises(ResaError, match="pickled checkpoints are not read") as err:
            tune(resume, whole.out)
        assert "\n" not in str(err.value)
        (step / old).unlink()
    read = ("state.json", "tensors.safetensors", "rng-0/state.json", "rng-0/tensors.safetensors",
            "adapter/adapter_model.safetensors")
    pristine = {step / name: (step / name).read_bytes() for name in read}
    for planted in pristine:
        planted.write_bytes(payload)
        with pytest.raises(ResaError, match="delete it to start over") as err:
            tune(resume, whole.out)
        assert "\n" not in str(err.value)
        planted.write_bytes(pristine[planted])
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ SFT baseline


def test_no_sae_is_plain_next_token_sft(tiny_qwen2, tmp_path):
    from transformers import AutoModelForCausalLM

    config = tiny_config(tiny_qwen2, None, no_sae=True, steps=12, limit=2, lr=3e-3)
    tuner = SAETuner(config)
    assert tuner.sae is None
    first = tuner.train_step(0)
    ids = tuner.examples[tuner.schedule.indices(0, 0)[0]][None]
    with torch.no_grad():  # before the first update the adapters are zero: the base model's own loss
        base_loss = AutoModelForCausalLM.from_pretrained(tiny_qwen2)(ids, labels=ids).loss
    assert first.ce == pytest.approx(float(base_loss), rel=1e-5) and first.kl is None
    result = tune(config, tmp_path / "sft")
    ce = [r.ce for r in result.records]
    assert sum(ce[-2:]) < 0.8 * sum(ce[:2])
    assert set(json.loads((tmp_path / "sft" / "train_log.jsonl").read_text().splitlines()[0])) == {
        "step", "epoch", "ce", "lr", "grad_norm", "tokens"}



def _trained(config: TuneConfig, steps: int) -> SAETuner:
    tuner = SAETuner(config)
    for step in range(steps):
        tuner.train_step(step)
    return tuner


def test_teacher_cache_trains_the_same_adapter_and_skips_the_teacher(tiny_qwen2, tiny_llama, saes, tmp_path):
    """A run that fills the teacher cache and one that reads it train, bit for bit on this machine, the adapter
    of a run without it (each of the 4 sequences is read 3 times in 6 steps of 2); the reading run never runs the
    teacher's forward, and what it reads is what decides its KL (a planted cache changes it)."""
    config = tiny_config(tiny_qwen2, saes["random"], limit=4, steps=6, grad_accum=2)
    cached = TuneConfig(**{**config.to_dict(), "teacher_cache": str(tmp_path / "cache")})
    plain, filling, reading = _trained(config, 6), _trained(cached, 6), _trained(cached, 6)
    assert plain.teacher.folder is None and filling.teacher.hits == 12 - 4 and reading.teacher.hits == 12
    files = sorted(filling.teacher.folder.glob("*.safetensors"))
    assert len(files) == len({tuple(e.tolist()) for e in filling.examples}) == 4
    for tuner in (filling, reading):
        assert all(torch.equal(a, b) for a, b in zip(plain.trainable, tuner.trainable, strict=True))
    ids = plain.examples[0][None]
    hidden = load_file(str(filling.teacher.folder / f"{sequence_key(ids)}.safetensors"))["hidden"]
    assert torch.equal(reading.teacher(ids), plain.teacher(ids))
    assert torch.equal(plain.model.get_base_model().get_output_embeddings()(hidden), plain.teacher(ids))
    for path in files:  # a planted cache: the reading run's teacher is whatever the files hold
        from safetensors.torch import save_file

        save_file({"hidden": torch.zeros_like(load_file(str(path))["hidden"])}, str(path))
    assert SAETuner(cached).train_step(0).kl != SAETuner(config).train_step(0).kl
    # another target, or another dtype, keys another folder
    assert model_key(tiny_qwen2, torch.float32, "cpu") != model_key(tiny_llama, torch.float32, "cpu")
    assert model_key(tiny_qwen2, torch.float32, "cpu") != model_key(tiny_qwen2, torch.bfloat16, "cpu")


def test_teacher_cache_refuses_what_it_would_change(tiny_qwen2, saes, tmp_path):
    """No cache for the SFT baseline (it has no teacher), and none for a model whose logits are more than its head
    applied to its last hidden state."""
    with pytest.raises(ResaError, match="no teacher"):
        tiny_config(tiny_qwen2, None, no_sae=True, teacher_cache=str(tmp_path)).check()
    tuner = SAETuner(tiny_config(tiny_qwen2, saes["random"], teacher_cache=str(tmp_path / "cache")))
    head = tuner.teacher._head
    tuner.teacher._head = lambda hidden: head(hidden) * 0.5  # as soft-capping or a logit scale would
    with pytest.raises(ResaError, match="output head"):
        tuner.teacher.check(tuner.examples[0][None])

# ------------------------------------------------------------------------------------------ presets and CLI


def test_presets():
    paper = preset_config("paper")
    assert paper.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" and paper.dataset == "still"
    assert (paper.layer, paper.lr, paper.epochs, paper.lora_r, paper.lora_alpha) == (12, 1e-6, 2, 32, 128)
    assert paper.lora_targets == ("q_proj", "k_proj", "v_proj", "o_proj") and paper.lora_dropout == 0.05
    cpu = preset_config("cpu", lr=3e-4)
    assert cpu.model is None and cpu.lr == 3e-4 and cpu.steps == 60
    assert preset_config("cpu", sae="x").layer is None  # an SAE folder names its own layer


def test_cli_tune_on_a_tiny_model(cli, tiny_qwen2, saes, tmp_path):
    out = tmp_path / "cli"
    args = ["tune", "--model", tiny_qwen2, "--sae", saes["random"], "--steps", "3", "--limit", "3",
            "--lora-targets", "attn+mlp", "--lr", "1e-3", "--device", "cpu", "--out", str(out)]
    code, stdout, stderr = cli(args)
    assert code == 0, stderr
    assert "3 steps, kl" in stdout
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}
    code, _, stderr = cli(args)  # the same --out again without --resume
    assert code == 2 and "already holds a tuning run" in stderr
    code, _, stderr = cli([*args[:-2], "--resume", "--lr", "5e-4", "--out", str(out)])
    assert code == 2 and "other settings (lr)" in stderr


def test_cli_errors_are_one_line(cli, tiny_qwen2, saes, tmp_path):
    narrow = save_topk_sae(tmp_path / "narrow", torch.eye(32), torch.eye(32), 4, hook_name("resid_post", 1))
    run = tmp_path / "run"
    Path(random_sae(run / "saes" / "blocks.1.hook_resid_post", hook_name("resid_post", 1)))
    no_answers = tmp_path / "q.jsonl"
    no_answers.write_text('{"problem": "1+1?"}\n')
    base = ["tune", "--model", tiny_qwen2, "--device", "cpu", "--steps", "1"]
    for args, needle in [
        (["--saes", str(run), "--layer", "9"], "layer 9 is outside the model"),
        (["--sae", narrow], "SAE d_in 32 does not match the model's d_model 64"),
        (["--sae", saes["random"], "--layer", "2"], "SAE was trained at blocks.1.hook_resid_post"),
        (["--saes", str(run), "--layer", "1", "--dataset", str(no_answers)], "no answer column"),
        (["--saes", str(run), "--layer", "1", "--lora-targets", "c_attn"], "LoRA targets c_attn"),
        (["--saes", str(run), "--layer", "1", "--kl-reduction", "sum"], "KL reduction 'sum' is unknown"),
        ([], "no SAE given"),
    ]:
        code, _, stderr = cli([*base, *args, "--out", str(tmp_path / "out")])
        assert code == 2, (args, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and needle in stderr, stderr


# ------------------------------------------------------------------------------------------ embedded model


@pytest.mark.slow
def test_tuning_the_embedded_model_lowers_kl(embedded, tmp_path):
    """A PCA-built TopK SAE (the 64 top principal directions of layer 12 and their negatives, k 32) spliced
    into SmolLM2: the SAE reads the HookedTransformer's activation, and 24 steps over the same 6 examples (the
    paper's short template, so that steps are quick) lower the KL."""
    from resa_interp.data.qa import load_qa
    from resa_interp.data.templates import format_trigger

    layer, hook = 12, hook_name("resid_post", 12)
    acts = []
    with torch.no_grad():
        for e in load_qa("synthetic", limit=16, seed=1):
            out = embedded.hf(**embedded.tokenizer(format_trigger(e.problem, e.answer, "short"), return_tensors="pt"),
                              output_hidden_states=True)
            acts.append(out.hidden_states[layer + 1][0, 1:])
    x = torch.cat(acts)
    _, _, v = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    pcs = v[:64]
    sae = save_topk_sae(tmp_path / "sae", torch.cat([pcs.T, -pcs.T], 1), torch.cat([pcs, -pcs], 0), 32, hook,
                        b_dec=x.mean(0), source="smollm2-135m")

    config = preset_config("cpu", sae=sae, limit=6, steps=24, template="short", save_every=None, device="cpu")
    tuner = SAETuner(config)
    read = []
    tuner.recon.register_forward_pre_hook(lambda _m, args: read.append(args[0].detach().clone()))
    tuner.train_step(0)
    ids = tuner.examples[tuner.schedule.indices(0, 0)[0]]
    _, cache = embedded.hooked.run_with_cache(ids[None], names_filter=hook)
    assert torch.allclose(read[0], cache[hook], atol=1e-4), (read[0] - cache[hook]).abs().max()
    del tuner

    result = tune(config, tmp_path / "run")
    kl = [r.kl for r in result.records]
    print("KL per step:", " ".join(f"{v:.4f}" for v in kl))
    assert sum(kl[-6:]) < 0.8 * sum(kl[:6]), kl  # the same 6 examples in the first and the last epoch
    stage = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["tune"]
    assert stage["source_model"] == "smollm2-135m" and stage["sae"]["d_in"] == 576


@pytest.mark.slow
def test_two_processes_under_torchrun_share_the_data(tiny_qwen2, saes, tmp_path):
    """The same command under a DDP launcher (2 CPU processes, gloo): each step reads one example per process."""
    import os
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from resa_interp.tuning import Schedule, encode_examples

    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    command = ["-m", "resa_interp.cli", "tune", "--model", tiny_qwen2, "--sae", saes["random"], "--steps", "4",
               "--limit", "8", "--lr", "1e-3", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher + command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    stage = json.loads((out / "manifest.json").read_text())["stages"]["tune"]
    assert stage["processes"] == 2
    config = TuneConfig(limit=8)  # the cpu preset's data with --limit 8 and the default seed
    examples, _ = encode_examples(config, AutoTokenizer.from_pretrained(tiny_qwen2))
    schedule = Schedule(len(examples), world=2, grad_accum=1, total_steps=4, seed=config.seed, shuffle=True)
    logged = [json.loads(line)["tokens"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    expected = [sum(len(examples[i]) for rank in (0, 1) for i in schedule.indices(step, rank)) for step in range(4)]
    assert logged == expected


def test_packed_tuning_steps_on_full_chunks(tiny_qwen2, saes):
    from transformers import AutoTokenizer

    from resa_interp.data.packing import pack_texts
    from resa_interp.data.qa import load_qa
    from resa_interp.data.templates import format_trigger

    config = tiny_config(tiny_qwen2, saes["random"], pack=True, max_length=96, limit=12, steps=1, grad_accum=2)
    tuner = SAETuner(config)
    texts = [format_trigger(e.problem, e.answer) for e in load_qa("synthetic", limit=12, seed=0)]
    chunks = pack_texts(AutoTokenizer.from_pretrained(tiny_qwen2), texts, 96)
    assert [e.tolist() for e in tuner.examples] == chunks and len(chunks) > 2
    record = tuner.train_step(0)
    assert record.tokens == 2 * 96 and record.kl > 0
