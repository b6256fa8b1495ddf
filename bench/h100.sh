#!/usr/bin/env bash
# One device-machine call that measures what needs a GPU (issues 5 and 6) in under 10 minutes:
#   0. decode the JPEG archive into the .npz cache (9.5 s on the H100 box, eighth session);
#   1. `python train.py` with default settings: wall time (target <= 2 min; not measured on a GPU yet for the default
#      model of the thirty-third session; `--preset long`, the model before, took 103 s on an H200 with nothing
#      compiled, twentieth session) and test MSE (target <= 0.0275);
#   2. `python evaluate.py` on that run (30-50 s);
#   3. bench/throughput.py: jaxae vs the PyTorch twin, eager and compiled, by batch size (torch.compile took
#      43 s to compile at B = 256 and more than 90 s at B = 1024: the step's limit may cut the last rows; the
#      JSON keeps what was measured);
#   4. bench/sweep.py: variants of the default model ($GRID), 4 workers on the one GPU (the eighth session's
#      8 runs of 30 epochs, two per worker, took about 4 min; three 100-epoch batch-1024 variants of the default
#      took 136-165 s sharing the H200, twentieth session: after steps 1-3 too little is left for them, so run the
#      default grid with PART=sweep below). Nothing
#      else may run on the GPU beside it: a fifth process (step 2 run in the background) ran the GPU out of
#      memory, since each worker takes 0.9 / 4 of it. What the limit cuts off leaves no row.
# Each step has its own time limit, so a slow step costs only its own results. Usage, from the repo root
# with the JPEG archive in data/ (git-ignored; name it in the call's `carry`):
#   OUT=/some/folder bash bench/h100.sh            # GRID='[...]' and BATCHES=256,1024 override the defaults
# Everything worth keeping lands in $OUT (at most 8 files): log.txt, default_metrics.jsonl, eval.out,
# eval.tar.gz, tp_h100.json, sweep.jsonl, sweep.log, curves.tar.gz (each sweep run's metrics.jsonl).
#
#   PART=variants OUT=/some/folder bash bench/h100.sh
# instead runs step 0, then `train.py` (timed) and `evaluate.py` for each of $VARIANTS ("name:flags;..."; by
# default the variants that the README's quality table quotes besides the plain model: --noise 0.2 (uniform levels
# since the twenty-eighth session, not yet measured on the default model), where evaluate.py also reports the
# reconstructions of noisy inputs, the denoising target, and --loss l1; about 2 x
# 100 s). $OUT gets log.txt and, per variant, train-NAME.out (train.py's whole output, each line stamped with the
# seconds since it started: set JAX_LOG_COMPILES=1 to see each compile's time), metrics-NAME.jsonl and
# eval-NAME.out (the device tool returns at most 8 files). TRAIN_FLAGS is appended to each train.py:
# TRAIN_FLAGS="--preset long" measures the default before the thirty-third session, which took about 103 s alone
# with nothing compiled, evaluate.py about 50 s (twentieth session). PARALLEL=1 trains all variants at once, then
# evaluates them at once, each process with 0.9 / n of the GPU's memory: quality figures in one call, wall times of
# a shared GPU (three `--preset long` runs at once on an H200: 1.45 s per epoch against 0.63 s alone, 206 s each).
# A training that the limit cuts is evaluated at its last checkpoint and reported INCOMPLETE, as is one that failed
# or never started; the script then exits 1. (PART=sweep and perf exit with bench/sweep.py's status, 3 when BUDGET cut the sweep, and print
# its rows as a table.) EVAL_FLAGS is appended to each evaluate.py (e.g. "--interp-steps 20"); its time limit is
# 120 s, so run an untimed `--best-codes` as an evaluate.py of its own after this script. With DATA, a dry run on CPU:
#   PART=variants DATA=some/image/folder TRAIN_FLAGS="--preset tiny --max-steps 4" OUT=/tmp/o bash bench/h100.sh
#
#   PART=sweep OUT=/some/folder bash bench/h100.sh
# spends the whole call on step 4 ($GRID over $BASE, $JOBS workers, 4 by default), for a quality study when the
# call's device time is short (the eleventh session's 15 minutes: two such calls).
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
DATA=${DATA:-data/cifar10-jpeg.tar.gz}
PART=${PART:-perf}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
EVAL_FLAGS=${EVAL_FLAGS:-}
RUNS=${RUNS:-/tmp/runs}   # the runs themselves (not returned by the device tool)
BUDGET=${BUDGET:-580}          # seconds this script may use in all
# the default (the quick preset's model, 4 encoder heads; 100 epochs, batch 1024, rate 0.002, 3-epoch warm-up) gave
# 0.0261 and 10-NN 31.2 % on the 2-core CPU box, seed 0 (thirty-third session; `--preset long`, one head of the width-64 model
# before, 0.0281-0.0282 over three seeds on an H200). What it does on other seeds, and what the CPU could not afford
# to try: 8 heads (the quick model's 20 epochs: 0.0261 and 10-NN 31.2 % against 4 heads' 0.0264, thirtieth session),
# 2 heads, GELU (the quick preset has ReLU for the CPU's sake), twice the width, batch 256, rate 0.004.
GRID=${GRID:-'[{"seed": 1}, {"seed": 2}, {"encoder_heads": 8}, {"encoder_heads": 2}, {"activation": "gelu"},
               {"width": 32}, {"batch_size": 256}, {"learning_rate": 0.004}]'}
BASE=${BASE:-'{}'}
# everything checked before the machine does any work: a typo must not cost device time
case ${1:-} in
  -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "error: bench/h100.sh takes no arguments (got '$*'): set PART, OUT, VARIANTS... (bash bench/h100.sh --help)"
     exit 2 ;;
esac
case $PART in
  perf|variants|sweep) ;;
  *) echo "error: PART=$PART: write PART=perf (the default), PART=variants or PART=sweep"; exit 2 ;;
esac
: "${OUT:?set OUT to a folder for the outputs (bash bench/h100.sh --help)}"
if [[ $PART == variants ]]; then
  IFS=';' read -ra variants <<< "${VARIANTS:-noise:--noise 0.2;l1:--loss l1}"
  trim() { local t=${1#"${1%%[![:space:]]*}"}; echo "${t%"${t##*[![:space:]]}"}"; }
  names=()
  for v in "${variants[@]}"; do
    name=$(trim "${v%%:*}")
    if [[ $v != *:* || ! $name =~ ^[A-Za-z0-9_.-]+$ ]]; then
      echo "error: VARIANTS entry '$v': write name:flags, the name of letters, digits, _ . - (entries split by ;)"
      exit 2
    fi
    names+=("$name")
  done
fi
set -o pipefail  # the exit status is the work's (below), not that of the tee it is piped into
mkdir -p "$RUNS" "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: sweep() writes into it from another folder
left() { echo $((BUDGET - SECONDS)); }
# within SECONDS CMD...: CMD under `timeout SECONDS`, or skipped with a line when under 10 s are left
# (`timeout 0` would mean no limit, and a negative one fails)
within() { local t=$1; shift; if (( t < 10 )); then echo "skipped: ${t} s left"; return 124; fi; timeout "$t" "$@"; }
step() { echo; echo "=== [$SECONDS s] $*"; }
since() { python3 -c "print(f'{$(date +%s.%N) - $1:.1f}')"; }   # seconds since a `date +%s.%N`, to 0.1 s

# step 4: the grid in $JOBS workers, with what is left of the budget
sweep() {
  step "4. bench/sweep.py, variants of the default model: base $BASE"
  # output to a file, not a pipe: a pipe closed early (head) would kill the workers at their next print.
  # A run the limit cuts off writes no row (sweep.py prints STOPPED).
  local rc
  within $(( $(left) - 15 )) python3 bench/sweep.py --data $DATA --root $RUNS/sweep --out "$OUT/sweep.jsonl" \
      --jobs ${JOBS:-4} --base "$BASE" --grid "$GRID" > $RUNS/sweep.log 2>&1
  rc=$?
  grep -E "RESULT|STOPPED|FAILED|rror|skipped|x[0-9]+, jax" $RUNS/sweep.log | head -40
  cp $RUNS/sweep.log "$OUT/sweep.log"
  [[ -d $RUNS/sweep ]] && (cd $RUNS/sweep && tar czf "$OUT/curves.tar.gz" */metrics.jsonl 2>/dev/null)
  [[ -s $OUT/sweep.jsonl ]] && python3 bench/sweep.py --table "$OUT/sweep.jsonl"
  if (( rc == 124 )); then  # not 124 for the script: the device tool reads that as its own time limit
    echo "sweep: cut (or skipped) by BUDGET=$BUDGET; the rows of the runs that finished are above"
    rc=3
  fi
  return $rc  # sweep.py's: 0 when every run of the grid ran; 3 when the budget cut it
}

{
step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint, torch; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"

step "0. decode the JPEG archive into the .npz cache (what a first train.py run also does)"
t0=$(date +%s.%N)
within 120 python3 -c "from jaxae.data import load; load('$DATA')"
echo "decode: $(since $t0) s"

if [[ $PART == sweep ]]; then
  sweep; rc=$?
  step "done"
  exit $rc
fi

if [[ $PART == variants ]]; then
  incomplete=0
  # train NAME FLAGS LIMIT: train.py under LIMIT seconds; its whole output, each line stamped with the seconds since
  # the command started (where start-up goes), in $OUT/train-NAME.out; exit status and wall time in $RUNS/rc-NAME
  train() {
    local name=$1 flags=$2 limit=$3 t0 us0=${EPOCHREALTIME/./}; t0=$(date +%s.%N)  # us0: microseconds, no fork
    rm -rf "$RUNS/$name" "$RUNS/eval-$name.out"  # an earlier call's run must not pass for this one's
    within "$limit" python3 train.py --data $DATA --workdir "$RUNS/$name" --fresh $flags $TRAIN_FLAGS 2>&1 \
        | while IFS= read -r line || [[ -n $line ]]; do
            printf '%.1f %s\n' "$(( ${EPOCHREALTIME/./} - us0 ))e-6" "$line"; done > "$OUT/train-$name.out"
    echo "${PIPESTATUS[0]} $(since $t0)" > "$RUNS/rc-$name"
    cp "$RUNS/$name/metrics.jsonl" "$OUT/metrics-$name.jsonl" 2>/dev/null
  }
  # has_checkpoint NAME: whether the run saved one (train.py saves on the SIGTERM of `timeout`)
  has_checkpoint() {  # a step folder, not an unfinished save (N.orbax-checkpoint-tmp-*)
    local d; for d in "$RUNS/$1"/checkpoints/*; do [[ ${d##*/} =~ ^[0-9]+$ ]] && return 0; done; return 1; }
  # evaluate NAME LIMIT: evaluate.py on a finished run, or on the last checkpoint of one the limit cut (exit 124)
  evaluate() {
    local name=$1 rc wall t0; read -r rc wall < "$RUNS/rc-$name"
    (( rc == 0 )) || { (( rc == 124 )) && has_checkpoint "$name"; } || return
    t0=$(date +%s.%N)
    within "$2" python3 evaluate.py --workdir "$RUNS/$name" $EVAL_FLAGS > "$RUNS/eval-$name.out" 2>&1
    rc=$?
    echo "evaluate.py wall: $(since $t0) s, exit $rc" >> "$RUNS/eval-$name.out"
  }
  report() {  # report NAME FLAGS; $OUT gets eval-NAME.out only when evaluate.py ran (the tool returns <= 8 files)
    local rc wall; read -r rc wall < "$RUNS/rc-$1"
    echo "--- $1: train.py $2 $TRAIN_FLAGS wall: $wall s, exit $rc"
    grep -E "^[0-9.]+ (done|time|stopped|error)" "$OUT/train-$1.out" | cut -d' ' -f2-
    if (( rc != 0 )); then
      incomplete=1
      if [[ -f $RUNS/eval-$1.out ]]; then
        echo "INCOMPLETE $1: the limit cut train.py (exit $rc); evaluate.py of its last checkpoint:"
      elif grep -q "^[0-9.]* skipped: " "$OUT/train-$1.out"; then
        echo "INCOMPLETE $1: train.py never started: $(grep -o "skipped: .*" "$OUT/train-$1.out")"
      else
        echo "INCOMPLETE $1: train.py did not finish (exit $rc) and left no checkpoint; no evaluate.py"
      fi
    fi
    if [[ -f $RUNS/eval-$1.out ]]; then
      tail -20 "$RUNS/eval-$1.out"; cp "$RUNS/eval-$1.out" "$OUT/eval-$1.out"
    fi
  }
  n=${#variants[@]}
  if [[ ${PARALLEL:-0} == 1 ]]; then
    # all trainings at once, then all evaluations at once, each process with 0.9 / n of the GPU's memory (one
    # process preallocates 0.75 of it by default): for quality figures; the wall times are shared-GPU times
    export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(f'{0.9 / $n:.2f}')")
    step "${n} trainings at once ($TRAIN_FLAGS), then their evaluate.py at once"
    limit=$(( $(left) - 130 ))
    for i in "${!variants[@]}"; do train "${names[$i]}" "${variants[$i]#*:}" $limit & done; wait
    limit=$(( $(left) < 120 ? $(left) : 120 ))
    for name in "${names[@]}"; do evaluate "$name" $limit & done; wait
    for i in "${!variants[@]}"; do report "${names[$i]}" "${variants[$i]#*:}"; done
  else
    for i in "${!variants[@]}"; do
      share=$(( $(left) / (n - i) ))  # this variant's part of what is left; evaluate.py takes <= 120 s
      step "python train.py ${variants[$i]#*:} $TRAIN_FLAGS, then evaluate.py"
      train "${names[$i]}" "${variants[$i]#*:}" $(( share - 120 ))
      evaluate "${names[$i]}" $(( $(left) < 120 ? $(left) : 120 ))
      report "${names[$i]}" "${variants[$i]#*:}"
    done
  fi
  step "done"
  exit $incomplete  # 1: some training did not finish (its line above says why)
fi

step "1. python train.py (default settings), wall time"
t0=$(date +%s.%N)
within 200 python3 train.py --data $DATA --workdir $RUNS/default --fresh 2>&1 | tail -40
echo "train.py wall: $(since $t0) s"
cp $RUNS/default/metrics.jsonl "$OUT/default_metrics.jsonl" 2>/dev/null

step "2. evaluate.py on the default run"
within 90 python3 evaluate.py --workdir $RUNS/default $EVAL_FLAGS > $RUNS/eval.out 2>&1; tail -12 $RUNS/eval.out
cp $RUNS/eval.out "$OUT/eval.out"
tar czf "$OUT/eval.tar.gz" --exclude latent_3d.html -C $RUNS/default eval

step "3. bench/throughput.py, batch sizes ${BATCHES:=256,1024,4096}"
within $(( $(left) > 420 ? 210 : $(left) / 2 )) python3 bench/throughput.py --batch-sizes $BATCHES \
    --steps-per-call epoch --out "$OUT/tp_h100.json" 2>&1 | tail -40

sweep; rc=$?
step "done"
exit $rc  # the sweep's (steps 1-3 report in the log)
} 2>&1 | tee "$OUT/log.txt"
