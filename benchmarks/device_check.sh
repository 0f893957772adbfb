#!/usr/bin/env bash
# The prepared first run on a GPU machine (about 7 minutes; installs nothing).
#
#   bash benchmarks/device_check.sh                     # from the checkout root
#   OUT=/some/dir DATA=/path/to/data bash benchmarks/device_check.sh
#   SPARSEMARG_CUPY=standin bash benchmarks/device_check.sh   # dry run without a GPU
#
# Records the environment (nvidia-smi, Python/NumPy/CuPy/CUDA versions), runs the
# cupy half of the tests on the real CuPy, compares 12 bit-VAE training steps on
# NumPy and CuPy (top-k, SparseMAP, SFE; D = 32 and 128), runs both benchmarks with
# --backend cupy, and a 1-epoch run plus a --resume of each experiment.  Fail-soft:
# every step has its own time limit and log under $OUT, a failing step does not stop
# the next; a one-screen summary ends the run (and $OUT/summary.txt).
# The datasets travel with the checkout in data/ (ignored by git; fashion-mnist/ and
# mnist/ as in experiments.data) unless DATA or REFIMPL_DATA says otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device-check}"
mkdir -p "$OUT"
export REFIMPL_DATA="${DATA:-${REFIMPL_DATA:-$PWD/data}}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export SPARSEMARG_CUPY="${SPARSEMARG_CUPY:-real}"
PY="${PYTHON:-python3}"
RUN="$PY -m benchmarks.device_check exec"        # runs a CLI module; honours SPARSEMARG_CUPY
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$SECONDS

step() {   # step NAME LIMIT_SECONDS COMMAND...: run with a limit, log, record one line
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local last
    last=$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-90)
    printf '%-22s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$last" | tee -a "$SUMMARY"
}

# 1. environment
{ nvidia-smi || echo "nvidia-smi: not available"; } > "$OUT/nvidia-smi.txt" 2>&1
step env 60 $PY -m benchmarks.device_check env
cp "$OUT/env.log" "$OUT/env.json" 2>/dev/null

# 2. the cupy half of the tests, on the real CuPy (SPARSEMARG_CUPY=real: no silent stand-in)
step tests-cupy 150 $PY -m pytest -q -x -m cupy -p no:cacheprovider tests

# 3. NumPy vs CuPy, 12 bit-VAE steps, same seed and data
step compare-steps 90 $PY -m benchmarks.device_check compare --steps 12 --json "$OUT/compare.json"

# 4. the benchmarks on CuPy
step bench-mappings 60 $RUN benchmarks.mappings --backend cupy --quick
step bench-bitvae-step 60 $RUN benchmarks.bitvae_step --backend cupy --quick

# 5. one epoch and a --resume of each experiment (small sizes)
R="$OUT/runs"
BV=(--backend cupy --max-train 512 --nll-samples 8 --max-test 64 --eval-batch-size 128 --no-download)
step bitvae-epoch1 40 $RUN experiments.bitvae "${BV[@]}" --epochs 1 --out "$R/bitvae"
step bitvae-resume 40 $RUN experiments.bitvae "${BV[@]}" --epochs 2 --resume --out "$R/bitvae"
SS=(--backend cupy --method sparsemax --max-train 640 --max-test 256 --batch-size 64 --no-download)
step ssvae-epoch1 40 $RUN experiments.ssvae "${SS[@]}" --epochs 1 --out "$R/ssvae"
step ssvae-resume 40 $RUN experiments.ssvae "${SS[@]}" --epochs 2 --resume --out "$R/ssvae"
SG=(--backend cupy --method sparsemax --steps-per-epoch 50 --val-games 256 --max-test 256)
step signal-epoch1 40 $RUN experiments.signal_game "${SG[@]}" --steps 50 --out "$R/signal"
step signal-resume 40 $RUN experiments.signal_game "${SG[@]}" --steps 100 --resume --out "$R/signal"

echo
echo "== device check: $(date -u +%Y-%m-%dT%H:%MZ), $((SECONDS - START)) s, SPARSEMARG_CUPY=$SPARSEMARG_CUPY, output in $OUT"
grep -E '"(cupy|numpy|gpu0|cuda_runtime|cuda_driver)"' "$OUT/env.json" 2>/dev/null | tr -d ' ,' | paste -sd' '
grep -m1 -E 'passed|failed|error' "$OUT/tests-cupy.log" 2>/dev/null | tail -n 1
grep -E '^## |^compare:' "$OUT/compare-steps.log" 2>/dev/null
echo "-- steps (rc 0 = ok, 124 = time limit):"
cat "$SUMMARY"
failed=$(grep -vc 'rc=0 ' "$SUMMARY")
echo "-- $failed step(s) failed"
exit $(( failed > 0 ))
