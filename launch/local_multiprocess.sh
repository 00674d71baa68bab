#!/usr/bin/env bash
# Simulate N hosts on one machine: N processes of `python -m jaxgen.main`, each with its own fake
# CPU devices, joined by jax.distributed (coordinator on localhost, gloo collectives); or, with
# GPUS_PER_PROCESS=g, each with its own g GPUs of a multi-GPU host (process i sees GPUs
# i*g ... i*g+g-1 through CUDA_VISIBLE_DEVICES; NCCL collectives), as on a GPU cluster.
#
#   launch/local_multiprocess.sh N --config=configs/toy/vp_mlp.py --workdir=/tmp/run [flags...]
#   GPUS_PER_PROCESS=1 launch/local_multiprocess.sh 2 --config=... --workdir=...   # 2 GPUs
#
# Every argument after N goes to jaxgen.main unchanged. Environment:
#   DEVICES_PER_PROCESS  fake CPU devices per process (default 2; ignored with GPUS_PER_PROCESS)
#   GPUS_PER_PROCESS     GPUs per process (default 0: CPU processes)
#   PORT                 coordinator port (default: a free one)
#   LOG_DIR              where process_<i>.log go (default: a new /tmp/jaxgen_local_mp.XXXX)
#   TIMEOUT              seconds before all processes are killed (default 0: none)
#   KILL_GRACE           seconds between SIGTERM and SIGKILL when stopping the others (default 10)
#   PYTHON               interpreter (default: python)
#   XLA_FLAGS_EXTRA      added to each process's XLA_FLAGS (which this script sets)
# Process 0's output is also shown here. If any process fails, the others get SIGTERM (the train
# loop saves a checkpoint at its next step), then SIGKILL after KILL_GRACE seconds (a process
# blocked in a collective on the dead peer never reaches that step), and the script exits with
# the failed process's status after printing the tail of every log.
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: $0 N --config=CONFIG --workdir=DIR [jaxgen.main flags...]  (N >= 1 processes)" >&2
  exit 2
fi
N="$1"; shift
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-2}"
GPUS_PER_PROCESS="${GPUS_PER_PROCESS:-0}"
if [[ ! "$GPUS_PER_PROCESS" =~ ^[0-9]+$ ]]; then
  echo "GPUS_PER_PROCESS=$GPUS_PER_PROCESS must be a whole number of GPUs (0: CPU processes)" >&2
  exit 2
fi
TIMEOUT="${TIMEOUT:-0}"
KILL_GRACE="${KILL_GRACE:-10}"
PYTHON="${PYTHON:-python}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}"
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/jaxgen_local_mp.XXXX)}"
mkdir -p "$LOG_DIR"

if ((GPUS_PER_PROCESS > 0)); then
  WHAT="$GPUS_PER_PROCESS GPU(s)"
else
  WHAT="$DEVICES_PER_PROCESS CPU devices"
fi
echo "local multi-process run: $N processes x $WHAT, coordinator localhost:$PORT, logs in $LOG_DIR"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  (
    cd "$REPO_ROOT"
    if ((GPUS_PER_PROCESS > 0)); then
      CUDA_VISIBLE_DEVICES="$(seq -s, $((i * GPUS_PER_PROCESS)) $((i * GPUS_PER_PROCESS + GPUS_PER_PROCESS - 1)))"
      export CUDA_VISIBLE_DEVICES
      export XLA_FLAGS="${XLA_FLAGS_EXTRA:-}"
    else
      export JAX_PLATFORMS=cpu
      export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS} ${XLA_FLAGS_EXTRA:-}"
    fi
    export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    exec "$PYTHON" -m jaxgen.main "$@" \
      --coordinator_address="localhost:$PORT" --num_processes="$N" --process_id="$i"
  ) >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=("$!")
done
# show process 0's log here until it exits
tail -n +1 --pid="${pids[0]}" -F "$LOG_DIR/process_0.log" 2>/dev/null \
  | grep --line-buffered -v '^\[Gloo\]' &
tail_pid=$!

status=0
start=$SECONDS
kill_at=-1
remaining=("${pids[@]}")
while ((${#remaining[@]})); do
  still=()
  for pid in "${remaining[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
    else
      rc=0; wait "$pid" || rc=$?
      if ((rc != 0 && status == 0)); then
        status=$rc
        echo "process with pid $pid exited with status $rc; stopping the others" >&2
        cleanup
        kill_at=$((SECONDS + KILL_GRACE))
      fi
    fi
  done
  remaining=("${still[@]+"${still[@]}"}")
  if ((TIMEOUT > 0 && SECONDS - start > TIMEOUT && ${#remaining[@]} && kill_at < 0)); then
    echo "timeout after ${TIMEOUT}s; stopping all processes" >&2
    cleanup
    status=124
    kill_at=$((SECONDS + KILL_GRACE))
  fi
  if ((kill_at >= 0 && SECONDS >= kill_at && ${#remaining[@]})); then
    echo "still running ${KILL_GRACE}s after SIGTERM; killing them" >&2
    for pid in "${remaining[@]}"; do
      kill -9 "$pid" 2>/dev/null || true
    done
  fi
  sleep 0.5
done
wait "$tail_pid" 2>/dev/null || true

if ((status != 0)); then
  for ((i = 0; i < N; i++)); do
    echo "----- process $i ($LOG_DIR/process_$i.log) -----" >&2
    grep -v '^\[Gloo\]' "$LOG_DIR/process_$i.log" | tail -n 40 >&2 || true
  done
fi
exit "$status"
