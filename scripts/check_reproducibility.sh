#!/usr/bin/env bash
# Train one small Stage I run (embedded model, layers 3 and 12, 8,192 tokens) under different CPU code paths and
# print a hash of the SAE weights of each: equal hashes are bit-identical SAEs. Run it on two machines and
# compare the "default" lines to see whether they reproduce each other.
#
#   scripts/check_reproducibility.sh [OUT]      (about 25 s per variant on 2 cores; OUT: runs/repro)
# Each line: the variant, the hash, the settings, the wall time of its train-saes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/repro}"
variant() {
  local name=$1; shift
  local args=()
  [ -n "${SELECT:-}" ] && args=(--select-precision "$SELECT")
  local t0=$SECONDS
  env "$@" .venv/bin/resa-interp train-saes --layers 3,12 --tokens 8192 "${args[@]}" --out "$out/$name" \
    >"$out/$name.log" 2>&1
  echo "$name: $(cat "$out/$name"/saes/blocks.*/sae_weights.safetensors | sha256sum | cut -c1-16)  ($* ${args[*]}) \
$((SECONDS - t0)) s"
}
mkdir -p "$out"
variant default RESA_VARIANT=default                                # MKL branch pinned by the package
variant no-amx ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16                  # bf16 selection without AMX tiles
variant hash-seed PYTHONHASHSEED=1                                  # another str-hash seed
variant mkl-avx2 MKL_CBWR=AVX2                                      # another MKL code branch
# candidates for bit-identity across CPU vendors: MKL's vendor-neutral branch, ATen's baseline kernels, and the
# top-k picked in float32 (oneDNN's bfloat16 kernels differ between AMX and AVX512-BF16 CPUs)
variant mkl-compatible MKL_CBWR=COMPATIBLE
SELECT=float32 variant fp32-select RESA_VARIANT=fp32-select
SELECT=float32 variant compatible-fp32 MKL_CBWR=COMPATIBLE
SELECT=float32 variant portable MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default
