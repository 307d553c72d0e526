#!/usr/bin/env bash
# Every check of the Realign kernel that needs an NVIDIA GPU, in one run of under 10 minutes.
#
#   tools/gpu_check.sh [ARTIFACT ...]          # full: all shapes, timings, torch.compile
#   QUICK=1 tools/gpu_check.sh [ARTIFACT ...]  # the pytest subset of shapes, no torch.compile
#
# With artifact folders (from `scredge export`), also runs the TensorRT runner's device-
# memory path on them (tools/gpu_check_runner.py; the engine is emulated by onnxruntime,
# since TensorRT itself may be absent) and, where TensorRT is installed, `scredge build`,
# `parity --backend trt` (with and without --cuda-graph) and `bench --backend trt
# --cuda-graph` (which times the uncaptured engine too) on the first one.
# Needs: nvidia-smi, nvcc, python with torch (CUDA build) and cuda-python or CuPy
# (cuda-python for the Python plugin's enqueue and the runner check), onnxruntime.
# Writes gpu_check_kernel.json / gpu_check_runner.json to $OUT if set, else a temp folder.
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
import sys
sys.path.insert(0, "tools")
import gpu_check_kernel
build_kernels, _, _ = gpu_check_kernel.load_scredge()
built, skipped = build_kernels.select_archs()
print("builds sm_" + " sm_".join(built), "+ PTX; skipped:", skipped or "none")
PYEOF

echo "== kernel correctness and timing"
timeout 400 "$PY" tools/gpu_check_kernel.py ${FLAGS[@]+"${FLAGS[@]}"} --json "$OUT_DIR/gpu_check_kernel.json"
rc=$?
runner_rc=0
if [[ $# -gt 0 ]]; then
    echo "== TensorRT runner device-memory path (engine emulated by onnxruntime)"
    timeout 150 "$PY" tools/gpu_check_runner.py "$@" --json "$OUT_DIR/gpu_check_runner.json"
    runner_rc=$?
fi
# With onnxruntime-gpu: the Realign custom-op kernel (realign_ort.cpp + the same
# realign_kernel.cu) on onnxruntime's CUDA provider, op tier and timing against the
# function body, and the runtime both ways on the artifacts.
ort_rc=skipped
if "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
    echo "== onnxruntime CUDA provider: the Realign custom-op kernel"
    timeout 300 "$PY" tools/gpu_check_ort_kernel.py "$@" --json "$OUT_DIR/gpu_check_ort_kernel.json"
    ort_rc=$?
else
    echo "== onnxruntime-gpu not installed (no CUDAExecutionProvider): Realign custom op on CUDA skipped"
fi
# With TensorRT installed: the whole path on the first artifact, through the scredge CLI
# (build with the plugin, parity at every tier the TensorRT runner serves, latency).
trt_rc=skipped
if [[ $# -gt 0 ]] && "$PY" -c "import tensorrt" 2>/dev/null; then
    echo "== TensorRT: build + parity + bench on $1"
    trt_rc=0
    work="$(mktemp -d)/artifact"
    cp -r "$1" "$work"
    SCREDGE="$PY -m scredge"
    timeout 300 $SCREDGE build "$work" --backend tensorrt || trt_rc=$?
    [[ $trt_rc == 0 ]] && { timeout 120 $SCREDGE parity "$work" --backend trt --json \
        > "$OUT_DIR/gpu_check_trt_parity.json" || trt_rc=$?; }
    [[ $trt_rc == 0 ]] && { timeout 120 $SCREDGE parity "$work" --backend trt --cuda-graph \
        --json > "$OUT_DIR/gpu_check_trt_parity_graph.json" || trt_rc=$?; }
    # with --cuda-graph, bench also times the same engine uncaptured: the ratio is the gain
    [[ $trt_rc == 0 ]] && { timeout 180 $SCREDGE bench "$work" --backend trt --cuda-graph \
        --json > "$OUT_DIR/gpu_check_trt_bench.json" || trt_rc=$?; }
elif [[ $# -gt 0 ]]; then
    echo "== TensorRT: not installed here (import tensorrt failed): build/parity/bench skipped"
fi
echo "== summary"
[[ $# -gt 0 ]] && echo "runner check: $([[ $runner_rc == 0 ]] && echo PASSED || echo "FAILED ($runner_rc)")"
[[ $# -gt 0 ]] && echo "TensorRT build + parity + bench: $([[ $trt_rc == 0 ]] && echo PASSED || echo "$trt_rc")"
echo "onnxruntime CUDA Realign kernel: $([[ $ort_rc == 0 ]] && echo PASSED || echo "$ort_rc")"
case $rc in
    0) echo "GPU checks PASSED in $((SECONDS - start)) s; numbers in $OUT_DIR/gpu_check_kernel.json" ;;
    124) echo "GPU checks TIMED OUT after 400 s (rerun with QUICK=1)" ;;
    *) echo "GPU checks FAILED (exit $rc) after $((SECONDS - start)) s" ;;
esac
[[ $rc == 0 ]] && rc=$runner_rc
[[ $rc == 0 && $trt_rc != skipped ]] && rc=$trt_rc
[[ $rc == 0 && $ort_rc != skipped ]] && rc=$ort_rc
exit $rc
