#!/usr/bin/env bash
# Device check: does this project work on this machine's CUDA GPU(s), and how fast?
#
# Usage: bash benchmarks/gpu_check.sh   (the interpreter: $PYTHON, else the repository's .venv, else python3)
#
# Runs, each timed and none stopping the others:
#   1. pytest tests/test_cuda.py (training steps in bf16 and fp16 with an injected overflow,
#      channels_last batches, --compile, resident data, grading inference against the CPU's,
#      the out-of-memory fallback, a GPU checkpoint on the CPU, 2 GPUs under torchrun);
#   2. benchmarks/train_step.py for each model at its recipe's batch: plain, each speed option
#      alone (amp, channels_last, fused) and all of them with compile; then fp16 with
#      channels_last and fused, the path training takes on the course's RTX 2080 Ti;
#   3. the grading scripts, bash hw1_1.sh and hw1_2.sh, on generated inputs of the course's
#      sizes (5,000 PNGs of 32x32; 313 JPEG tiles of 512x512) with random-weight checkpoints
#      of each model;
#   4. one epoch of p1_train.py and p2_train.py in fp16 on generated data; with two GPUs or
#      more, both again as 2 processes under torchrun (SyncBatchNorm and --cache-dir there).
# Then prints one table (img/s: a training run's own throughput, the grading scripts' images
# over their seconds end to end; peak GPU memory; seconds of each check) and exits 1 when any
# check failed, 0 otherwise. Without CUDA it prints one line and exits 2. A failed check's log
# tail is printed as it fails; every log is kept in the folder named at the end on failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
. "$repo/utils/python.sh" "$repo"
py="$python"

status=0
"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null || status=$?
if [ "$status" -eq 3 ]; then
    echo "gpu_check.sh: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check" >&2
    exit 2
elif [ "$status" -ne 0 ]; then
    echo "gpu_check.sh: $py cannot import torch (set PYTHON to the project's interpreter)" >&2
    exit 2
fi

work="$(mktemp -d)"
results="$work/results.tsv"   # check, status, img/s, peak GiB, seconds
steps="$work/train_step.jsonl"
mkdir -p "$work/logs"
: >"$results"
failed=0
gpus="$("$py" -c 'import torch; print(torch.cuda.device_count())')"
cd "$repo"

# check NAME IMAGES COMMAND...: run COMMAND, logging to logs/NAME.log; record its seconds and,
# unless IMAGES is "-", its img/s (the training throughput a run printed last, else IMAGES /
# seconds end to end) and the peak GPU memory the command printed last.
check() {
    local name="$1" images="$2"
    shift 2
    local log="$work/logs/${name//[^A-Za-z0-9._-]/_}.log" start seconds rate="-" peak="-" ok=1
    printf '%-48s ' "$name"
    start="$(date +%s.%N)"
    "$@" >"$log" 2>&1 || ok=0
    seconds="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
    if [ "$ok" -eq 0 ]; then
        printf '%s\tFAILED\t-\t-\t%s\n' "$name" "$seconds" >>"$results"
        failed=1
        echo "FAILED (${seconds}s); the end of its log:"
        tail -n 15 "$log" | sed 's/^/    /' || true
        return
    fi
    if [ "$images" != "-" ]; then
        rate="$(grep -oE '[0-9.e+]+ img/s' "$log" | tail -n 1 | cut -d ' ' -f 1 || true)"
        rate="$(awk -v r="$rate" -v n="$images" -v s="$seconds" \
            'BEGIN { printf "%.1f", r != "" ? r : (s > 0 ? n / s : 0) }')"
        # Inference prints "(peak GPU memory X GiB)", a training epoch "peak X GiB".
        peak="$(grep -oE 'peak (GPU memory )?[0-9.]+ GiB' "$log" | tail -n 1 | grep -oE '[0-9.]+' || true)"
    fi
    printf '%s\tok\t%s\t%s\t%s\n' "$name" "$rate" "${peak:--}" "$seconds" >>"$results"
    echo "ok (${seconds}s)"
}

# expect NAME ACTUAL WANTED: record a failed check when a count is not the one wanted.
expect() {
    if [ "$2" != "$3" ]; then
        printf '%s\tFAILED\t-\t-\t-\n' "$1" >>"$results"
        failed=1
        echo "$1: FAILED (found $2, wanted $3)"
    fi
}

echo "gpu_check.sh: $gpus GPU(s): $("$py" -c 'import torch; print(torch.cuda.get_device_name(0))'); logs in $work"

# 1. The CUDA tests.
check "pytest tests/test_cuda.py" - "$py" -m pytest -q -rs tests/test_cuda.py

# 2. Training steps of each model at its recipe's batch size.
for spec in vgg13:128:32 beit:32:224 fcn32s:8:512 deeplabv3:4:512; do
    IFS=: read -r model batch size <<<"$spec"
    check "train_step $model" - "$py" benchmarks/train_step.py --model "$model" --batch-size "$batch" \
        --steps 10 --warmup 3 --settings plain amp channels_last fused all --jsonl "$steps"
    check "train_step $model fp16" - "$py" benchmarks/train_step.py --model "$model" --batch-size "$batch" \
        --steps 10 --warmup 3 --amp-dtype fp16 --options amp channels_last fused --settings all --jsonl "$steps"
done

# 3. The grading scripts on inputs of the course's sizes, with random-weight checkpoints.
data="$work/data"
check "generate inputs" - "$py" - "$data" <<'EOF'
"""Grading inputs of the course's sizes, labelled training data, and random-weight checkpoints."""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, ".")
from datasets.p1 import MEAN, STD  # noqa: E402
from datasets.synthetic import write_tiles  # noqa: E402
from models import untrained_checkpoint  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for folder, count, labelled in (("p1_test", 5000, False), ("p1_train", 2000, True), ("p1_val", 500, True)):
    (root / folder).mkdir(parents=True)
    for i in range(count):
        name = f"{i % 50}_{i}.png" if labelled else f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / folder / name)
(root / "p2_test").mkdir()
for i in range(313):
    # Smooth noise: random 64x64 colours upsampled, as compressible as a photograph.
    small = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    small.resize((512, 512), Image.BICUBIC).save(root / "p2_test" / f"{i:04d}_sat.jpg", quality=90)
write_tiles(root / "p2_train", 48, size=512, seed=0)
write_tiles(root / "p2_val", 16, size=512, seed=1, start=100)
for arch, classes in (("vgg13", 50), ("beit", 50), ("fcn32s", 7), ("deeplabv3", 7)):
    save_checkpoint(untrained_checkpoint(arch, num_classes=classes, mean=MEAN, std=STD), root / f"{arch}.pth")
EOF

for arch in vgg13 beit; do
    csv="$work/out/$arch.csv"
    check "bash hw1_1.sh $arch (5000 images)" 5000 \
        env HW1_P1_CHECKPOINT="$data/$arch.pth" PYTHON="$py" bash hw1_1.sh "$data/p1_test" "$csv"
    expect "hw1_1.sh $arch: CSV lines" "$(cat "$csv" 2>/dev/null | wc -l)" 5001
done
for arch in fcn32s deeplabv3; do
    masks="$work/out/$arch"
    check "bash hw1_2.sh $arch (313 tiles)" 313 \
        env HW1_P2_CHECKPOINT="$data/$arch.pth" PYTHON="$py" bash hw1_2.sh "$data/p2_test" "$masks"
    expect "hw1_2.sh $arch: masks" "$(ls "$masks" 2>/dev/null | grep -c '_sat\.png$' || true)" 313
done

# 4. One epoch of training in fp16 (the course GPU's autocast), then under torchrun.
p1_flags=(--model vgg13 --train-dir "$data/p1_train" --val-dir "$data/p1_val" --epochs 1 --amp fp16 --no-progress)
p2_flags=(--model deeplabv3 --no-pretrained --train-dir "$data/p2_train" --val-dir "$data/p2_val" --epochs 1
          --amp fp16 --no-progress)
check "p1_train vgg13 fp16 (1 epoch, 2000 images)" 2000 \
    "$py" p1_train.py "${p1_flags[@]}" --output-dir "$work/runs/p1"
check "p2_train deeplabv3 fp16 (1 epoch, 48 tiles)" 48 \
    "$py" p2_train.py "${p2_flags[@]}" --output-dir "$work/runs/p2" --cache-dir "$work/cache"
if [ "$gpus" -ge 2 ]; then
    torchrun=(env OMP_NUM_THREADS=4 "$py" -m torch.distributed.run --standalone --nproc_per_node=2)
    check "torchrun x2 p1_train vgg13 fp16" 2000 \
        "${torchrun[@]}" p1_train.py "${p1_flags[@]}" --output-dir "$work/runs/p1_ddp"
    check "torchrun x2 p2_train deeplabv3 fp16" 48 \
        "${torchrun[@]}" p2_train.py "${p2_flags[@]}" --output-dir "$work/runs/p2_ddp" --cache-dir "$work/cache_ddp"
    expect "torchrun p2_train: sync-bn lines" \
        "$(grep -c 'sync-bn; output' "$work/logs/torchrun_x2_p2_train_deeplabv3_fp16.log" || true)" 1
else
    echo "torchrun: skipped (one GPU)"
fi

# The table: every check, then every timed train_step setting.
"$py" - "$results" "$steps" <<'EOF'
import json
import sys
from pathlib import Path

rows = [line.split("\t") for line in Path(sys.argv[1]).read_text().splitlines()]
if Path(sys.argv[2]).exists():
    for line in Path(sys.argv[2]).read_text().splitlines():
        r = json.loads(line)
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        rows.append([f"  step {r['model']} b{r['batch_size']} {r['setting']} ({r['amp']})", "ok",
                     f"{r['images_per_second']:.1f}", peak, f"{r['seconds']:.1f}"])
width = max(len(r[0]) for r in rows)
print(f"\n{'check':<{width}}  {'status':<6}  {'img/s':>9}  {'peak GiB':>8}  {'seconds':>7}")
for name, status, rate, peak, seconds in rows:
    print(f"{name:<{width}}  {status:<6}  {rate:>9}  {peak:>8}  {seconds:>7}")
EOF

if [ "$failed" -ne 0 ]; then
    echo "gpu_check.sh: some checks FAILED; logs in $work"
    exit 1
fi
rm -rf "$work"
echo "gpu_check.sh: every check passed"
