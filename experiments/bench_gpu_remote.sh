#!/usr/bin/env bash
# Issue 18's GPU benchmark (experiments/bench_gpu.py) on a bare CUDA machine: one that has its own python3 with
# torch, timm, lightning and transformers but no diffusers, hydra-core, omegaconf, anomalib or wandb, and no
# package registry. Nothing is installed into that python: the one missing package (diffusers, pure Python) comes
# as a wheel, unpacked into a folder on PYTHONPATH; the repository itself goes on PYTHONPATH (no `make install`).
#
#   1. Where a registry is reachable, in the repository root (once; ~6 MB):
#        bash experiments/bench_gpu_remote.sh --prepare
#   2. Copy the repository with its .whl/ folder to the GPU machine; there, in the repository root:
#        bash experiments/bench_gpu_remote.sh [bench_gpu.py options, e.g. --official /path/to/OneNIP]
#      Results: outputs/bench_gpu/bench_gpu.{json,md} (OUT_DIR=... to change). PY=... picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/anomaly_zoo_bench_site}
# diffusers 0.42.1 needs huggingface-hub >= 1.32 and safetensors >= 0.8 (both already on the GPU machine's image).
SPECS=(diffusers==0.42.1)

if [[ "${1:-}" == "--prepare" ]]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d "$WHEELS" "${SPECS[@]}"
  du -sh "$WHEELS"
  exit 0
fi

if ! "$PY" -c "import diffusers" 2>/dev/null; then
  ls "$WHEELS"/*.whl >/dev/null || { echo "no wheels in $WHEELS: run '$0 --prepare' where pip can download" >&2; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF'
import importlib.metadata as md
import torch
names = ("torch", "timm", "lightning", "transformers", "diffusers", "huggingface-hub", "numpy")
print("versions:", ", ".join(f"{n} {md.version(n)}" for n in names))
print("CUDA:", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for name, least in (("timm", (1, 0, 9)), ("huggingface-hub", (1, 32))):
    have = tuple(int(x) for x in md.version(name).split(".")[:3] if x.isdigit())
    if have < least:
        print(f"WARNING: {name} {md.version(name)} is older than the project needs ({'.'.join(map(str, least))}): add "
              f"a newer wheel to SPECS in this script (--prepare) and rerun")
PYEOF
exec "$PY" experiments/bench_gpu.py --out "${OUT_DIR:-outputs/bench_gpu}" "$@"
