"""Run directories: atomic writes, the manifest that links stages, and provenance (versions, hashes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SEED_COLUMN = "count_seed_"
"""counts.csv of a multi-seed run: `count_seed_<s>` is SAE seed s's reasoning-feature count (`count` stays the
first seed's); `features` writes these columns and select-layers reads them."""
_VERSIONED = ("resa-interp", "torch", "transformers", "transformer-lens", "sae-lens", "peft", "datasets")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write text (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write pretty-printed JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of the libraries whose behaviour a result depends on (and of the `extra` ones a stage adds), plus
    Python and the platform; a library that is not installed is left out."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (*_VERSIONED, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
"""CPU features that decide which matmul kernels MKL and oneDNN pick (and so the last bits of a result)."""
NUMERIC_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
               "CUBLAS_WORKSPACE_CONFIG")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def pin_blas_branch() -> str | None:
    """Pin MKL's code branch (`MKL_CBWR`) so that float32 matmuls give the same bits on every CPU of a kind:
    AVX512 on Intel CPUs with AVX-512 (the branch MKL takes there anyway), AVX2 on other x86 CPUs with AVX2. A
    value already set is kept. It must happen before the first MKL call of the process: the package does it on
    import. Without it MKL picks a branch per CPU model, and a different branch changes the last bits of every
    product and so the SAEs trained from them (README, "Reproducibility")."""
    if "MKL_CBWR" not in os.environ:
        info = _cpuinfo()
        flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")),
                         []))
        if "GenuineIntel" in info and "avx512f" in flags:
            os.environ["MKL_CBWR"] = "AVX512"
        elif "avx2" in flags:
            os.environ["MKL_CBWR"] = "AVX2"
    return os.environ.get("MKL_CBWR")


def numerics() -> dict[str, Any]:
    """What besides the inputs and the versions decides a run's numbers: threads, the CPU and its vector
    extensions, the BLAS/oneDNN settings, the GPU and its matmul precision."""
    import torch

    cpuinfo = _cpuinfo()
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")),
                     []))
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    record: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "env": {name: os.environ[name] for name in NUMERIC_ENV if name in os.environ},
    }
    if torch.cuda.is_available():
        record["cuda_device"] = torch.cuda.get_device_name()
        record["cuda"] = torch.version.cuda
    return record


def sha256_text(*parts: str) -> str:
    """SHA-256 over text parts (separated, so ('ab','c') != ('a','bc'))."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def run_relative(path: str | Path, run: str | Path) -> str:
    """`path` as a run records it: relative to the run folder, so that a moved or copied run still points at what
    it holds (and at a sibling run, when both move together). Names that are not local paths (a hub SAE id) stay."""
    if not Path(path).exists():
        return str(path)
    return os.path.relpath(Path(path).resolve(), Path(run).resolve())


def read_manifest(run: str | Path) -> dict[str, Any]:
    """The run's manifest (empty if the run has none yet)."""
    path = Path(run) / MANIFEST
    if not path.exists():
        return {"stages": {}}
    return json.loads(path.read_text())


def record_stage(run: str | Path, stage: str, record: dict[str, Any]) -> dict[str, Any]:
    """Add or replace one stage's record in the run's manifest (with time, library versions and `numerics()`)."""
    manifest = read_manifest(run)
    manifest.setdefault("stages", {})[stage] = {
        **record,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": library_versions(),
        "numerics": numerics(),
    }
    atomic_write_json(Path(run) / MANIFEST, manifest)
    return manifest
