#!/usr/bin/env bash
# Every check of the Realign kernel that needs an NVIDIA GPU, in one run of under 10 minutes.
#
#   tools/gpu_check.sh            # full: all shapes, timings, torch.compile baseline
#   QUICK=1 tools/gpu_check.sh    # the pytest subset of shapes, no torch.compile
#
# Needs: nvidia-smi, nvcc, python with torch (CUDA build) and cuda-python or CuPy.
# Writes gpu_check_kernel.json (every number) to $OUT if set, else to a temp folder.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$(mktemp -d)}"
FLAGS=()
[[ -n "${QUICK:-}" ]] && FLAGS+=(--quick --no-compile)

echo "== machine"
if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
    echo "no NVIDIA GPU/driver on this machine"; exit 2
fi
if ! command -v nvcc >/dev/null; then
    echo "nvcc not found (install the CUDA toolkit)"; exit 2
fi
nvcc --version | grep release
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

echo "== GPU archs this nvcc builds (skipped ones with the reason)"
start=$SECONDS
"$PY" - <<'PYEOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("gpu_check_kernel", "tools/gpu_check_kernel.py")
module = importlib.util.module_from_spec(spec)
sys.modules["gpu_check_kernel"] = module
spec.loader.exec_module(module)
build_kernels, _, _ = module.load_scredge()
built, skipped = build_kernels.select_archs()
print("builds sm_" + " sm_".join(built), "+ PTX; skipped:", skipped or "none")
PYEOF

echo "== kernel correctness and timing"
timeout 540 "$PY" tools/gpu_check_kernel.py ${FLAGS[@]+"${FLAGS[@]}"} --json "$OUT_DIR/gpu_check_kernel.json"
rc=$?
echo "== summary"
case $rc in
    0) echo "GPU checks PASSED in $((SECONDS - start)) s; numbers in $OUT_DIR/gpu_check_kernel.json" ;;
    124) echo "GPU checks TIMED OUT after 540 s (rerun with QUICK=1)" ;;
    *) echo "GPU checks FAILED (exit $rc) after $((SECONDS - start)) s" ;;
esac
exit $rc
