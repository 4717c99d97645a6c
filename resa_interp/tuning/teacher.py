"""The teacher of SAE-Tuning's KL: the target model without SAE or LoRA. Its final hidden states can be kept on
disk, one file per training sequence, so that runs on the same model and data (other seeds, layers, SAEs) read
them and apply only the output head instead of running the whole teacher again; the logits are the same bits as
the teacher's own forward on the same machine."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from resa_interp.errors import ResaError
from resa_interp.runs import atomic_write_bytes, sha256_file

WEIGHT_FILES = ("config.json", "*.safetensors", "*.bin")
"""The files of a model folder whose bytes decide the teacher (and so a cache's key)."""


def model_key(model_dir: str | Path, dtype: torch.dtype, device: str) -> str:
    """Key of a teacher: the model folder's config and weights, the dtype, the device type and the torch build
    (each of which changes the hidden states' last bits)."""
    digest = hashlib.sha256(f"{dtype}|{torch.device(device).type}|{torch.__version__}".encode())
    files = sorted({p for pattern in WEIGHT_FILES for p in Path(model_dir).glob(pattern)})
    if not files:
        raise ResaError(f"teacher cache: {model_dir} holds no config or weights to key the cache on")
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}".encode())
    return digest.hexdigest()[:16]


def sequence_key(ids: torch.Tensor) -> str:
    """Key of one training sequence: its token ids."""
    return hashlib.sha256(ids.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()[:24]


class Teacher:
    """The teacher's logits for one sequence at a time, from its forward or, with `cache`, from its final hidden
    states kept under `cache/<model key>/`. `model` is the peft model whose adapters are disabled for the teacher;
    `model_dir` the target's folder (for the key)."""

    def __init__(self, model, model_dir: str | Path, device: str, cache: str | Path | None = None):
        self.model = model
        self.folder: Path | None = None
        """Where this teacher's hidden states are kept (None: no cache)."""
        self.hits = 0
        """Sequences whose hidden states were read from the cache."""
        if cache is not None:
            base = model.get_base_model()
            self._decoder, self._head = base.get_decoder(), base.get_output_embeddings()
            self.folder = Path(cache) / model_key(model_dir, base.dtype, device)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [1, seq, vocab] of the target without SAE or LoRA on `ids` [1, seq]."""
        with torch.no_grad(), self.model.disable_adapter():
            if self.folder is None:
                return self.model(input_ids=ids, use_cache=False).logits
            return self._head(self._hidden(ids))

    def check(self, ids: torch.Tensor) -> None:
        """Refuse an architecture whose logits are not its output head applied to its decoder's last hidden state
        (e.g. with logit soft-capping), where the cache would change the teacher."""
        if self.folder is None:
            return
        with torch.no_grad(), self.model.disable_adapter():
            direct = self.model(input_ids=ids, use_cache=False).logits
            hidden = self._decoder(input_ids=ids, use_cache=False).last_hidden_state
            if not torch.equal(direct, self._head(hidden)):
                raise ResaError(f"--teacher-cache: {type(self.model.get_base_model()).__name__}'s logits are not its "
                                "output head applied to its last hidden state; run without the cache")

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor:
        from safetensors.torch import load_file, save

        path = self.folder / f"{sequence_key(ids)}.safetensors"
        if path.exists():
            self.hits += 1
            return load_file(path, device=str(ids.device))["hidden"]
        hidden = self._decoder(input_ids=ids, use_cache=False).last_hidden_state
        atomic_write_bytes(path, save({"hidden": hidden.contiguous().cpu()}))
        return hidden
