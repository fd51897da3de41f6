#!/usr/bin/env bash
# GPU checks in one go (what was run on the lent H100 for benchmarks/RESULTS.md):
#   1. the CUDA fast-path tests (fp32 vs CPU, channels_last, fp16 + GradScaler, bf16, compile,
#      fused optimisers);
#   2. paper-scale method overhead: Suave ResNet-50 and Daino ViT-S/16, 2x224 + 6/8x96 crops,
#      batch 64 unlabeled + 32 labeled, fp32 and mixed precision;
#   3. the multi-crop loader per worker vs the measured Suave consumption rate;
#   4. real short runs through torchrun + NCCL + AMP + channels_last on cifar100-mini;
#   5. a run that fails mid-epoch (lr 1e30 -> NaN) must exit at once with its loader workers;
#   6. torch.compile at paper scale (last: it is the slowest to start).
# Each section has a time limit and its own log; the summary lines come last.
#   bash benchmarks/gpu_check.sh [out_dir] [data_dir holding cifar100-mini] [seconds]
# SECTIONS="tests bench data train fail compile" (default: all) picks sections.
set -u
OUT_DIR=${1:-${OUT:-gpu_check_out}}
DATA_DIR=${2:-.gpu_data}
BUDGET=${3:-450}
PY=${PYTHON:-python3}
SECTIONS=" ${SECTIONS:-tests bench data train fail compile} "
want() { [[ $SECTIONS == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
START=$(date +%s)
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

# run NAME LIMIT_S CMD...: run with at most LIMIT_S seconds (less if the budget runs short).
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 20)); then
        echo "SKIPPED $name: budget spent" | tee -a "$SUMMARY"
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $(date +%T) $name (limit ${limit}s)"
    local tic=$(date +%s)
    timeout -k 5 "$limit" "$@" >>"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "--- $name rc=$rc in $(($(date +%s) - tic)) s" | tee -a "$SUMMARY"
    tail -n 4 "$OUT_DIR/$name.log"
}

bench() {  # bench LABEL ARGS...: one bench_step.py run, its result lines kept in the summary
    local label=$1
    shift
    [[ -n ${BENCHES:-} && " $BENCHES " != *" $label "* ]] && return  # BENCHES: labels to run
    echo "### $label" >>"$OUT_DIR/bench_step.log"
    run bench_step 90 "$PY" benchmarks/bench_step.py --reps 8 --warmup 3 --queue_length 3840 "$@"
    grep -A 24 "^### $label" "$OUT_DIR/bench_step.log" | grep -E "^(suave|daino|RATIO)" |
        sed "s/^/[$label] /" >>"$SUMMARY"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c "import common, torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    nproc
} >"$OUT_DIR/env.log" 2>&1
tee -a "$SUMMARY" <"$OUT_DIR/env.log"

PAPER_R50=(--backbone resnet50 --global_size 224 --local_size 96 --num_local 6 --batch 64+32
    --num_classes 1000)
PAPER_VIT=(--backbone vit_small --global_size 224 --local_size 96 --num_local 8 --batch 64+32
    --num_classes 1000)
TRAIN_EXTRA=(data.num_workers=10 train.epochs=2)
if [[ ${SMOKE:-0} == 1 ]]; then  # CPU rehearsal of this script: tiny shapes, a few steps
    PAPER_R50=(--backbone resnet18 --global_size 32 --local_size 16 --num_local 2 --batch 4+2
        --num_classes 10 --reps 2 --warmup 1)
    PAPER_VIT=(--backbone vit_small --global_size 32 --local_size 16 --num_local 2 --batch 4+2
        --num_classes 10 --reps 2 --warmup 1)
    TRAIN_EXTRA=(data.num_workers=2 train.epochs=1 train.max_steps=3 train.batch_size_unlabeled=32
        train.batch_size_labeled=16 model.backbone=resnet_mini)
fi

# 1. correctness of each fast path on the GPU (compile tests last, they take longest)
want tests && run tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_paths.py tests/test_nccl.py \
    -k "(cuda or nccl) and not compile"
want tests && grep -E "passed|failed" "$OUT_DIR/tests.log" | tail -1 >>"$SUMMARY"

# 2. method overhead at paper scale
if want bench; then
bench suave_r50_fp32 --methods suave "${PAPER_R50[@]}"
bench suave_r50_fp16_cl --methods suave "${PAPER_R50[@]}" --precision fp16 --channels_last
bench suave_r50_bf16_cl --methods suave "${PAPER_R50[@]}" --precision bf16 --channels_last
bench daino_vits_fp32 --methods daino "${PAPER_VIT[@]}"
bench daino_vits_bf16 --methods daino "${PAPER_VIT[@]}" --precision bf16
fi

# 3. loader vs the measured model rate (Suave ResNet-50 fp16, images/s of the train step)
RATE=$(grep -A 20 "^### suave_r50_fp16_cl" "$OUT_DIR/bench_step.log" |
    grep -m1 "suave: train step" | sed -E 's/.* ([0-9.]+) images\/s.*/\1/')
want data && run bench_data 70 "$PY" benchmarks/bench_data.py --scenarios paper --reps 3 \
    --root "$DATA_DIR/cifar100-mini/train" --model_rate "${RATE:-0}"
want data && grep -E "^(RATIO|workers|paper)" "$OUT_DIR/bench_data.log" | tail -4 >>"$SUMMARY"

# 4. real runs: torchrun (1 process) -> NCCL process group, loader workers, AMP, channels_last
declare -A PRECISION=([suave]=fp16 [daino]=bf16)  # fp16: GradScaler + LARS; bf16: no scaler
for method in suave daino; do
    want train || break
    run "train_$method" 100 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
        "main_$method.py" --config "$method/configs/cifar100_2500.yaml" \
        --output_dir /tmp/gpu_check_runs --name "$method" data.dataset=imagefolder \
        "data.root=$DATA_DIR/cifar100-mini" "${TRAIN_EXTRA[@]}" \
        "train.precision=${PRECISION[$method]}" train.channels_last=true train.eval_every_epochs=1 \
        train.checkpoint_every_epochs=1 log.print_every=13 log.plots=false
    grep -E "img/s|val_top1|backend|nccl|NCCL" "$OUT_DIR/train_$method.log" | tail -3 |
        sed "s/^/[train_$method] /" >>"$SUMMARY"
done

# 5. a failing run exits with its one-line error (rc 2) at once, loader workers and all
if want fail; then
    run fail_fast 60 "$PY" main_daino.py --config daino/configs/cifar100_2500.yaml \
        --output_dir /tmp/gpu_check_runs --name fail data.dataset=imagefolder \
        "data.root=$DATA_DIR/cifar100-mini" "${TRAIN_EXTRA[@]}" optim.base_lr=1e30 \
        optim.warmup_epochs=0 log.plots=false
    grep -E "^error:|rc=" "$OUT_DIR/fail_fast.log" | tail -2 | sed "s/^/[fail_fast] /" >>"$SUMMARY"
fi

# 6. torch.compile: tests, then Daino ViT-S/16 bf16 at paper scale
want compile || {
    echo "=== summary ($(($(date +%s) - START)) s)"; cat "$SUMMARY"
    exit 0
}
run tests_compile 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_paths.py -k "cuda and compile"
grep -E "passed|failed" "$OUT_DIR/tests_compile.log" | tail -1 >>"$SUMMARY"
bench daino_vits_bf16_compile --methods daino "${PAPER_VIT[@]}" --precision bf16 --compile

echo "=== summary ($(($(date +%s) - START)) s)"
cat "$SUMMARY"
