#!/usr/bin/env bash
# Issue 15's GPU part in one device call: every figure goes to files under $OUT.
#
#   bash experiments/gpu_session.sh prepare   # here, once: fills .packed/ (about 57 MB)
#   device run, carry [".packed"], timeout_s 560:
#     bash experiments/gpu_session.sh run
#
# `prepare` (on the CPU machine) packs CIFAR-10 into .packed/cifar10.npz, copies the PyTorch
# baselines from ../shared/bench (which does not travel) into .packed/bench/ and the
# pure-Python ml_collections, missing from the device image, into .packed/site/.
#
# `run` (on the device), in this order, each part stopped at its share of BUDGET_S (450 s),
# so that the first parts' figures come back even if the last ones run out of time:
#   1. ssl_jax SimCLR ResNet-18 CIFAR, 32 px, 512 images (simclr_v1.py:cifar10), with a
#      jax.profiler trace and its top ops (item 4); PyTorch eager + torch.compile
#      (torch_simclr_step.py); ssl_jax SimCLR ResNet-50 224 px 256 images and DINO
#      ViT-S/16 2x224 + 10x96 128 images (dino.py); PyTorch eager DINO.
#   3. The SimCLR CIFAR-10 epoch from .packed/cifar10.npz (bench_epoch.py), with one kNN.
#   2. The other methods at their cifar10 variant (ResNet-18, 32 px, batch 512).
#   -  PyTorch DINO with torch.compile, last (it did not finish compiling in 100 s before).
# `run PART...` runs only the parts named (the names `part` gives below), e.g. in a second
# call what the first one's budget left out: `run other_methods_jax dino_torch_compile`.
# Files under $OUT: results.jsonl (every JSON line), summary.md (the table), session.log,
# env.txt, profile.tar.gz (the traces).
#
# TINY=1 shrinks every part to seconds (smoke variants, 2 steps; TINY_METHODS: which of the
# other methods, default byol instdisc), to check this script on a CPU:
#   python -m ssl_jax.data.pack ../shared/datasets/cifar10 .packed/cifar10_tiny.npz \
#       --per_class train=40 test=10
#   TINY=1 BUDGET_S=3000 PACKED=.packed/cifar10_tiny.npz OUT=/tmp/out \
#       bash experiments/gpu_session.sh run
set -u
cd "$(dirname "$0")/.."

prepare() {
  set -e
  export PYTHONPATH=$PWD
  mkdir -p .packed/bench .packed/site
  [ -f .packed/cifar10.npz ] ||
    python -m ssl_jax.data.pack "${CIFAR10_DIR:-../shared/datasets/cifar10}" .packed/cifar10.npz
  cp ../shared/bench/torch_simclr_step.py ../shared/bench/torch_dino_step.py .packed/bench/
  rm -rf .packed/site/ml_collections
  local where='import ml_collections, os; print(os.path.dirname(ml_collections.__file__))'
  cp -r "$(python -c "$where")" .packed/site/
  find .packed/site -name __pycache__ -prune -exec rm -rf {} +
  du -sh .packed
  echo "carry .packed; with the tracked files it must stay under 64 MiB"
}

OUT=${OUT:-/tmp/gpu_session_out}
TINY=${TINY:-0}
PACKED=${PACKED:-.packed/cifar10.npz}
BUDGET_S=${BUDGET_S:-450}
PARTS=""   # `run PART...`: only these parts
START=$(date +%s)
LOG=$OUT/session.log
RESULTS=$OUT/results.jsonl

# part NAME CAP_S COMMAND...: runs COMMAND for at most CAP_S seconds and what is left of the
# budget, its output in session.log and its JSON lines in results.jsonl.
part() {
  local name=$1 cap=$2 left
  shift 2
  if [ -n "$PARTS" ] && [[ " $PARTS " != *" $name "* ]]; then return; fi
  left=$((BUDGET_S - ($(date +%s) - START)))
  { [ "$cap" -gt "$left" ] || [ "$TINY" = 1 ]; } && cap=$left   # a CPU check: no caps
  if [ "$cap" -lt 20 ]; then
    echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
    return
  fi
  echo "== $name (at most ${cap}s): $*" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout -k 10 "$cap" "$@" > "$OUT/part.log" 2>&1
  local rc=$?
  cat "$OUT/part.log" >> "$LOG"
  grep '^{' "$OUT/part.log" | python3 -c "
import json, sys
for line in sys.stdin:
  try:
    record = json.loads(line)
  except ValueError:
    continue
  print(json.dumps({'part': '$name', 'framework': record.get('fw', 'ssl_jax'), **record}))
" >> "$RESULTS"
  rm -f "$OUT/part.log"
  echo "== $name: rc $rc in $(($(date +%s) - t0))s" | tee -a "$LOG"
}

summary() {
  python3 - "$RESULTS" <<'EOF' > "$OUT/summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| part | framework | config | model | views | images/step | images/s | step ms | "
      "TFLOP/s | compile s | peak GiB | s/epoch | device idle |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
  if "top_ops" in r:   # a trace's line: listed below the table
    continue
  peak = r.get("peak_device_bytes")
  cells = [r["part"], r["framework"], r.get("config", ""),
           r.get("model", ""), r.get("views", r.get("crops", r.get("res", ""))),
           r.get("images_per_step", r.get("images", r.get("batch", ""))),
           r.get("images_per_s", r.get("img_s", "")),
           r.get("step_ms", r.get("resident_step_ms", "")),
           r.get("tflops_per_s", ""), r.get("compile_s", r.get("warm_s", "")),
           f"{peak / 2**30:.1f}" if peak else "", r.get("epoch_s", ""),
           r.get("device_idle_share", r.get("error", ""))]
  print("| " + " | ".join(str(c) for c in cells) + " |")
for r in rows:
  if r.get("top_ops"):
    print(f"\nTop ops of {r['part']}, {r['config']} (op, ms per step, share):\n")
    for op in r["top_ops"] if isinstance(r["top_ops"], list) else [r["top_ops"]]:
      print(f"- {op}")
EOF
}

run() {
  mkdir -p "$OUT"
  : > "$LOG"; : > "$RESULTS"
  export PYTHONPATH=$PWD:$PWD/.packed/site PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
  # Compiled steps kept across calls while the machine stays warm (a second call's compile_s
  # is then a cache read).
  export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/ssl_jax_compile_cache}
  local profile=/tmp/ssl_jax_profile
  rm -rf "$profile"
  { date -u; nvidia-smi 2>&1 | head -15
    python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
      'optax', optax.__version__, jax.devices())" 2>&1; } > "$OUT/env.txt"
  local methods="instdisc invaspread cpc cmc moco_v1 moco_v2 moco_v3 simclr_v2 swav byol simsiam"
  methods="$methods dino"
  local r18=configs/simclr_v1.py:cifar10 r50=configs/simclr_v1.py dino=configs/dino.py
  local steps=(--steps=20 --warmup=3) r50_batch=256 dino_batch=128 epochs=3 variant=cifar10
  if [ "$TINY" = 1 ]; then
    r18=configs/simclr_v1.py:smoke r50=configs/simclr_v1.py:smoke dino=configs/dino.py:smoke
    steps=(--steps=2 --warmup=1) r50_batch=16 dino_batch=16 epochs=1 variant=smoke
    methods=${TINY_METHODS:-"byol instdisc"}
  fi
  local others
  others=$(for m in $methods; do printf "configs/%s.py:%s," "$m" "$variant"; done)
  local bench="python3 experiments/bench_step.py"

  part simclr_r18_jax 120 $bench --configs=$r18 "${steps[@]}" --profile_dir=$profile \
    --profile_steps=5
  part simclr_torch 150 python3 .packed/bench/torch_simclr_step.py
  part simclr_r50_jax 120 $bench --configs=$r50 "${steps[@]}" \
    --override=batch_size=$r50_batch --profile_dir=$profile --profile_steps=3
  part dino_jax 90 $bench --configs=$dino "${steps[@]}" --override=batch_size=$dino_batch
  part dino_torch 60 env COMPILE=0 python3 .packed/bench/torch_dino_step.py
  part simclr_epoch_jax 90 python3 experiments/bench_epoch.py --configs=$r18 \
    --override=dataset=packed:$PACKED --override=num_steps=0 --epochs=$epochs --knn
  part other_methods_jax 200 $bench --configs="${others%,}" "${steps[@]}"
  part dino_torch_compile 120 python3 .packed/bench/torch_dino_step.py

  tar -czf "$OUT/profile.tar.gz" -C "$profile" . 2>> "$LOG" || true
  if [ "$(stat -c %s "$OUT/profile.tar.gz" 2>/dev/null || echo 0)" -gt 15000000 ]; then
    # Too large to come back: keep the perfetto traces only.
    (cd "$profile" && find . -name 'perfetto_trace.json.gz' | tar -czf "$OUT/profile.tar.gz" -T -)
  fi
  summary
  echo "== done in $(($(date +%s) - START))s; files: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; PARTS="$*"; run ;;
  *) echo "usage: bash experiments/gpu_session.sh prepare|run" >&2; exit 2 ;;
esac
