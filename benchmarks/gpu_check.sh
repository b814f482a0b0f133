#!/usr/bin/env bash
# One-GPU throughput check of clinpeft pretraining at LLaMA-7B shape (H100/H200 class), <= 8 minutes.
#
#   benchmarks/gpu_check.sh                 # on the GPU machine; writes $OUT/gpu_check.md and .json
#   benchmarks/gpu_check.sh --cpu-smoke     # the same code path on CPU with a tiny shape (~1-2 min)
#
# What it runs (benchmarks/throughput.py, nothing downloaded): a random-init LLaMA-7B-shaped model
# (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000), LoRA r=16 on q_proj/v_proj, bf16
# base weights with fp32 LoRA weights under bf16 autocast, 512-token rows of the MIMIC-IV-Note-like
# mix (88% ~300-token notes, 12% 2,000-3,000), batch 16, in three parts (each its own time limit):
#   1. attention: clinpeft's packed layout (fill), the same blocks without a mask (packed-unmasked:
#      what keeping notes apart costs) and the paper's (one note per row, truncated, padded), for each
#      attention path that runs here: sdpa, flex_attention, flash_attention_2 (when flash_attn is
#      installed) -> gpu_check.md / .json;
#   2. kernels: packed + sdpa, plain against torch.compile (train.compile) and Liger's fused loss
#      (train.fused_loss, when liger_kernel is installed) -> gpu_check_kernels.md / .json;
#   3. correctness: tests/test_packing.py's packed-logits-equal-per-note test for every attention path
#      found (when pytest and clinpeft's dependencies import) -> gpu_check_tests.txt;
#   4. with 2 or more GPUs only: FSDP against DDP memory and the FSDP tests -> gpu_check_fsdp.md (see part 4).
# Reports tokens/s, useful tokens/s, MFU against the measured bf16 GEMM ceiling and against the
# published dense bf16 peak (H100 SXM / H200: 989 TFLOPS; A100: 312), peak memory, the loss of the
# first and last step (the kernels must train the same model), and the projected time of one epoch
# over MIMIC-IV-Note.
#
# MIMIC-IV-Note size assumed for the projection: 2,653,149 notes (the paper's count: 331,794
# discharge + 2,321,355 radiology, MIMIC-IV-Note v2.2) and 2.0e9 LLaMA tokens: 7.4e9 characters
# (README, "Preparing the pretraining corpus": estimate from the v2.2 files) x 0.27 tokens per
# character (LLaMA's 32k SentencePiece vocabulary on English clinical text, ~3.7 characters per
# token: an assumption, not a measurement; override with CORPUS_TOKENS=...). The packed layout's
# projection scales this corpus's epoch by tokens, the paper layout's by notes (one row each).
# The paper reports 21.6 h for one epoch of LoRA pretraining on one A100-80GB (Table 2).
#
# Python: the machine's python3 when it imports torch, transformers and peft; otherwise a venv in
# /tmp/v that sees the system's packages (so an installed torch is reused) and pip-installs only
# what is missing. Nothing else is fetched.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
OUT="${OUT:-$here/gpu-check-out}"
mkdir -p "$OUT"
smoke=0
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) smoke=1 ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (expected --cpu-smoke)" >&2; exit 2 ;;
  esac
done

needs='import torch, transformers, peft, numpy'
found=""
PY="${PYTHON:-}"  # PYTHON=/path/to/python: use that one
for candidate in ${PY:+"$PY"} python3 "$here/.venv/bin/python" /tmp/v/bin/python; do
  if [ -x "$(command -v "$candidate" 2>/dev/null || echo /nonexistent)" ] && "$candidate" -c "$needs" 2>/dev/null; then
    found="$candidate"; break
  fi
done
PY="${found:-}"
if [ -z "$PY" ]; then
  echo "gpu_check.sh: creating /tmp/v (system packages visible, so an installed torch is reused)" >&2
  python3 -m venv --system-site-packages /tmp/v
  missing=""
  python3 -c 'import torch' 2>/dev/null || missing="torch"
  /tmp/v/bin/pip install -q $missing 'transformers>=4.46' 'peft>=0.13' 'accelerate>=1.0' numpy
  PY=/tmp/v/bin/python
fi
echo "gpu_check.sh: python $PY ($("$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'))" >&2

if [ "$smoke" = 1 ]; then
  device=cpu
  shape=(--hidden 64 --layers 2 --heads 4 --kv-heads 4 --intermediate 172 --vocab 1000 --batch 2 --n-notes 200
         --rounds 1 --steps 2 --warmup 1 --gemm-size 256)
  peak=()
else
  device=cuda
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check.sh: no CUDA device visible to torch; use --cpu-smoke on a CPU")'
  name="$("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
  case "$name" in
    *H100*|*H200*) peak=(--peak-tflops 989) ;;
    *A100*) peak=(--peak-tflops 312) ;;
    *) peak=() ;;
  esac
  shape=(--hidden 4096 --layers 32 --heads 32 --kv-heads 32 --intermediate 11008 --vocab 32000 --batch 16
         --n-notes 4000 --rounds 2 --steps 5 --warmup 2 --gemm-size 8192)
fi

attn=sdpa,flex_attention
if "$PY" -c 'import flash_attn' 2>/dev/null; then attn=$attn,flash_attention_2; fi
kernels=plain,compile
if "$PY" -c 'import liger_kernel' 2>/dev/null; then kernels=$kernels,liger; fi
common=(--device "$device" "${shape[@]}" ${peak[@]+"${peak[@]}"} --lora-r 16 --block 512 --precisions bf16-weights
        --corpus-tokens "${CORPUS_TOKENS:-2.0e9}" --corpus-notes 2653149)

echo "gpu_check.sh: 1/3 attention paths ($attn)" >&2
timeout 210 "$PY" benchmarks/throughput.py "${common[@]}" --layouts packed,packed-unmasked,paper --attn "$attn" \
  --json "$OUT/gpu_check.json" --md "$OUT/gpu_check.md" || echo "gpu_check.sh: part 1 failed or ran out of time" >&2

echo "gpu_check.sh: 2/3 kernels ($kernels)" >&2
timeout 200 "$PY" benchmarks/throughput.py "${common[@]}" --layouts packed --attn sdpa --kernels "$kernels" \
  --json "$OUT/gpu_check_kernels.json" --md "$OUT/gpu_check_kernels.md" \
  || echo "gpu_check.sh: part 2 failed or ran out of time" >&2

echo "gpu_check.sh: 3/3 packed logits equal per-note logits, each attention path" >&2
if "$PY" -c 'import pytest, pydantic, datasets, sklearn' 2>/dev/null; then
  PYTHONPATH="$here/src" timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_packing.py \
    -k packed_logits_equal > "$OUT/gpu_check_tests.txt" 2>&1 || true
  tail -1 "$OUT/gpu_check_tests.txt" >&2
else
  echo "not run: pytest or clinpeft's dependencies (pydantic, datasets, scikit-learn) not importable" \
    > "$OUT/gpu_check_tests.txt"
fi

# 4. sharded training, only where 2 or more GPUs are lent: full fine-tuning under DDP and under FSDP
#    (train.fsdp=true) on 2 GPUs, each process's peak GPU memory (benchmarks/fsdp_memory.py --device cuda,
#    a 0.9B-parameter LLaMA: 16 B/param = 14 GB per DDP process, half of it per FSDP process), then the
#    two-process FSDP tests (tests/test_fsdp.py: equality with one process, resume, stacked fine-tuning).
gpus="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"
if [ "$smoke" = 0 ] && [ "$gpus" -ge 2 ]; then
  echo "gpu_check.sh: 4/4 FSDP on 2 of $gpus GPUs" >&2
  PYTHONPATH="$here/src" timeout 240 "$PY" benchmarks/fsdp_memory.py --device cuda --hidden 2048 --layers 16 \
    --intermediate 5632 --heads 16 > "$OUT/gpu_check_fsdp.md" 2>&1 || echo "gpu_check.sh: part 4 failed or ran out of time" >&2
  PYTHONPATH="$here/src" CUDA_VISIBLE_DEVICES=0,1 timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_fsdp.py \
    >> "$OUT/gpu_check_fsdp.md" 2>&1 || true
  tail -1 "$OUT/gpu_check_fsdp.md" >&2
else
  echo "gpu_check.sh: 4/4 FSDP skipped: it needs 2 GPUs and no --cpu-smoke ($gpus visible)" >&2
fi

if [ -f "$OUT/gpu_check.md" ]; then
  {
    echo
    echo "Projection: one epoch over MIMIC-IV-Note, ${CORPUS_TOKENS:-2.0e9} tokens / 2,653,149 notes (assumptions:"
    echo "benchmarks/gpu_check.sh header), column 'corpus epoch h'. The paper: 21.6 h for one epoch of LoRA on one A100-80GB."
    echo "packed-unmasked: the same blocks with notes attending to each other (timing reference for the mask's cost)."
    [ "$smoke" = 1 ] && echo "(--cpu-smoke: tiny shape on CPU; the numbers only prove the script runs.)"
  } >> "$OUT/gpu_check.md"
fi
echo "gpu_check.sh: wrote $OUT/gpu_check.md, gpu_check_kernels.md, gpu_check_tests.txt (+ .json)" >&2
