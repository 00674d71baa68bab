#!/usr/bin/env bash
# Train jaxgen on a Cloud TPU VM pod slice: create it, install the repo on every worker, run the
# same `python -m jaxgen.main` command on every worker (jax.distributed starts itself there via
# parallel.initialize_distributed), keep the workdir on a GCS bucket, tear the slice down.
#
#   launch/tpu_pod.sh all      create + setup + run + delete (delete also on failure/Ctrl-C)
#   launch/tpu_pod.sh create | setup | run | delete | ssh CMD...   one stage at a time
#
# Settings (environment):
#   TPU_NAME      name of the slice                        (default jaxgen-$USER)
#   ZONE          e.g. us-central2-b                       (required)
#   PROJECT       GCP project                              (default: gcloud's)
#   ACCELERATOR   slice type, e.g. v4-32, v5litepod-16      (default v4-32)
#   TPU_VERSION   TPU VM software version                   (default tpu-ubuntu2204-base)
#   SPOT=1        use Spot capacity (runs resume from their checkpoints when restarted)
#   BUCKET        gs://bucket (required): mounted on every worker at /gcs/<bucket> (gcsfuse)
#   RUN           run name; workdir = /gcs/<bucket>/jaxgen/$RUN (default: the config name + date;
#                 set it to resume a run, or when calling `run` as its own stage)
#   CONFIG        config file (default configs/cifar10/vp_ddpmpp_continuous.py)
#   MODE          train | eval | sample | reflow | distill   (default train)
#   TFDS_GCS      gs:// folder holding prepared TFDS data sets (array_record); copied to
#                 ~/tensorflow_datasets on every worker in `setup` (optional)
#   JAX_SPEC      pip spec of JAX for TPUs (default "jax[tpu]")
#   KEEP=1        with `all`: keep the slice after the run
# Extra arguments after the stage name go to jaxgen.main, e.g.
#   ZONE=us-central2-b BUCKET=gs://my-bucket launch/tpu_pod.sh all --config.training.n_iters=1000
#
# The workdir lives on the bucket through a gcsfuse mount (every worker sees the same files; orbax
# writes each host's part of a checkpoint there), so a re-created slice resumes the run.
set -euo pipefail

STAGE="${1:-}"
[[ -n "$STAGE" ]] && shift || true
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TPU_NAME="${TPU_NAME:-jaxgen-${USER:-user}}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/cifar10/vp_ddpmpp_continuous.py}"
MODE="${MODE:-train}"
JAX_SPEC="${JAX_SPEC:-jax[tpu]}"
# a default name from the config: configs/toy/vp_mlp.py:moons -> vp_mlp_moons (no ':' or '/')
config_name() {
  local path="${1%%:*}" arg="" name
  [[ "$1" == *:* ]] && arg="_${1#*:}"
  name="$(basename "${path%.py}")$arg"
  printf '%s' "${name//[^A-Za-z0-9_.-]/_}"
}
RUN="${RUN:-$(config_name "$CONFIG")_$(date +%Y%m%d_%H%M%S)}"
REMOTE_DIR="jaxgen"  # in each worker's home

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
[[ -n "${ZONE:-}" ]] || die "set ZONE (e.g. ZONE=us-central2-b)"
GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && COMMON+=(--project="$PROJECT")

need_bucket() {
  [[ "${BUCKET:-}" == gs://* ]] || die "set BUCKET=gs://your-bucket (holds the workdir)"
  BUCKET_NAME="${BUCKET#gs://}"; BUCKET_NAME="${BUCKET_NAME%%/*}"
  MOUNT="/gcs/$BUCKET_NAME"
  WORKDIR="$MOUNT/jaxgen/$RUN"
}

on_all_workers() {  # run a shell command on every worker at once
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker=all --command="$1"
}

create() {
  local extra=()
  [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
  echo "creating $ACCELERATOR slice $TPU_NAME in $ZONE"
  "${GCLOUD[@]}" create "$TPU_NAME" "${COMMON[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$TPU_VERSION" "${extra[@]}"
}

setup() {
  need_bucket
  echo "copying the repository (git HEAD + uncommitted changes) to every worker"
  local tarball
  tarball="$(mktemp /tmp/jaxgen_src.XXXX.tar.gz)"
  # tracked and untracked files that exist (ls-files also lists tracked files deleted from the
  # work tree, which tar would fail on)
  (cd "$REPO_ROOT" && git ls-files -co --exclude-standard -z \
     | while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done \
     | tar --null -T - -czf "$tarball")
  "${GCLOUD[@]}" scp "$tarball" "$TPU_NAME:~/jaxgen_src.tar.gz" "${COMMON[@]}" --worker=all
  rm -f "$tarball"
  echo "installing jaxgen, $JAX_SPEC and gcsfuse on every worker; mounting $BUCKET at $MOUNT"
  on_all_workers "set -e
    rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/jaxgen_src.tar.gz -C ~/$REMOTE_DIR
    python3 -m pip install -q -U pip
    python3 -m pip install -q -U '$JAX_SPEC'
    python3 -m pip install -q -e ~/$REMOTE_DIR
    if ! command -v gcsfuse >/dev/null; then
      echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
    fi
    sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
    mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $BUCKET_NAME $MOUNT
    if [ -n '${TFDS_GCS:-}' ]; then
      mkdir -p ~/tensorflow_datasets && gcloud storage rsync -r '${TFDS_GCS:-}' ~/tensorflow_datasets
    fi
    python3 -c 'import jax, jaxgen; print(\"jax\", jax.__version__, \"and jaxgen installed\")'"
}

run() {
  need_bucket
  local args=""
  for a in "$@"; do args+=" $(printf '%q' "$a")"; done
  echo "running on every worker: jaxgen.main --config=$CONFIG --workdir=$WORKDIR --mode=$MODE$args"
  # Every worker runs the same command (output of all workers shown here, and in each worker's
  # ~/jaxgen_run.log); the run fails if any worker fails.
  on_all_workers "set -o pipefail; cd ~/$REMOTE_DIR && export TFDS_DATA_DIR=\$HOME/tensorflow_datasets && \
    python3 -m jaxgen.main --config=$CONFIG --workdir=$WORKDIR --mode=$MODE$args \
    2>&1 | tee ~/jaxgen_run.log"
  echo "workdir: $WORKDIR (= $BUCKET/jaxgen/$RUN)"
}

delete() {
  echo "deleting $TPU_NAME"
  "${GCLOUD[@]}" delete "$TPU_NAME" "${COMMON[@]}" --quiet
}

case "$STAGE" in
  create) create ;;
  setup) setup ;;
  run) run "$@" ;;
  delete|teardown) delete ;;
  ssh) on_all_workers "$*" ;;
  all)
    need_bucket
    if [[ "${KEEP:-0}" != 1 ]]; then trap 'delete || true' EXIT; fi
    create
    setup
    run "$@"
    ;;
  *) die "usage: $0 all|create|setup|run|delete|ssh [jaxgen.main flags...]" ;;
esac
