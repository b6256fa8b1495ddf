#!/usr/bin/env bash
# Where a training run's start-up goes: train.py once per variant, each in a fresh process with JAX_LOG_COMPILES=1,
# printing every compile that took over 0.5 s and train.py's `time:` line (the seconds to the end of the first
# epoch, then per epoch). A variant is NAME or NAME:VAR=VALUE,VAR=VALUE (environment for that run only). Usage:
#   DATA=data/cifar10-jpeg.tar.gz FLAGS="--epochs 6" OUT=/some/folder bash bench/startup.sh \
#       cold:JAX_COMPILATION_CACHE_DIR=/tmp/jc warm:JAX_COMPILATION_CACHE_DIR=/tmp/jc \
#       notriton:XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
# (the fifteenth session's H100 call, docs/performance.md; that call also ran XLA_FLAGS=--xla_gpu_autotune_level=0).
# Without a JAX_COMPILATION_CACHE_DIR of its own a variant runs with no compilation cache, so that it compiles;
# a "cold" variant needs a folder of its own that is empty (a second call on the same machine finds it filled).
# Each run is limited to LIMIT seconds (default 150; a run cut there still ends its epoch first). $OUT gets each
# run's whole output, NAME.out, and summary.txt, what it prints. Each run's line also gives the malloc arenas
# jaxae.hostmem allows it. It exits 1 when a run did not finish (cut by LIMIT: exit 124).
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
: "${DATA:?set DATA to the dataset (train.py --data)}" "${OUT:?set OUT to a folder for the outputs}"
(( $# )) || { echo "error: name at least one variant (bash bench/startup.sh --help)"; exit 2; }
mkdir -p "$OUT"; : > "$OUT/summary.txt"
parse() { name=${1%%:*}; envs=(); [[ $1 == *:* ]] && IFS=',' read -ra envs <<< "${1#*:}"; }  # NAME[:VAR=VALUE,...]
for variant in "$@"; do  # all checked before any run: a typo must not cost device time
  parse "$variant"
  ok=1; [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || ok=0
  for e in "${envs[@]}"; do [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || ok=0; done
  if (( ! ok )); then
    echo "error: variant '$variant': write NAME or NAME:VAR=VALUE,... (NAME of letters, digits, _ . -)"; exit 2
  fi
done
python3 -c "from jaxae.data import load; load('$DATA')" || exit 1  # decode once, outside the timed runs
for variant in "$@"; do
  parse "$variant"
  arenas=$(env "${envs[@]}" python3 -c "from jaxae import hostmem; print(hostmem.arena_limit() or 'glibc default')")
  t0=$(date +%s.%N)  # after the arena probe: the wall time is train.py's alone
  env JAX_COMPILATION_CACHE_DIR= "${envs[@]}" JAX_LOG_COMPILES=1 timeout "${LIMIT:-150}" python3 train.py \
      --data "$DATA" --workdir "/tmp/startup-runs/$name" --fresh ${FLAGS:-} > "$OUT/$name.out" 2>&1
  rc=$?
  (( rc == 0 )) || failed=1
  {
    echo "$name: exit $rc$( (( rc == 124 )) && echo " (cut by LIMIT)"), wall $(python3 -c \
        "import time; print(f'{time.time() - $t0:.1f}')") s, malloc arenas $arenas"
    awk '/Finished XLA compilation/ && $(NF-1) > 0.5 {printf "    compiled %s in %.1f s\n", $(NF-3), $(NF-1)}' \
        "$OUT/$name.out"
    grep -E "^(time|done|stopped|error)" "$OUT/$name.out" | sed 's/^/    /'
  } | tee -a "$OUT/summary.txt"  # also a file: later output of the same call can push it out of the tail
done
exit ${failed:-0}  # 1: some run did not finish (its exit is above)
