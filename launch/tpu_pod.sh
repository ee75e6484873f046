#!/usr/bin/env bash
# Run one qgjax command on every worker of a Cloud TPU VM slice (JAX multi-controller).
#
#   launch/tpu_pod.sh --name qg-pod --zone us-east5-a --accelerator v5litepod-64 [--create] \
#       [--version v2-alpha-tpuv5-lite] [--project P] [--spot] [--dry-run] \
#       -- qgjax generate --config configs/generate.py --config.mesh='[("data",-1)]'
#
# Steps: (optionally) create the slice; ship the code at HEAD (git archive) to every worker;
# install with tools/setup_env.sh and jax[tpu]; run the command on all workers at once with
# QGJAX_DISTRIBUTED=auto, so `jax.distributed.initialize()` finds the slice's topology itself.
# The same config runs on one CPU: only the mesh and the batch size change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); . "$here/common.sh"
name="" zone="" accel="" version="v2-alpha-tpuv5-lite" project="" create=0 spot=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --accelerator) accel=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --project) project="--project=$2"; shift 2 ;;
    --create) create=1; shift ;;
    --spot) spot="--spot"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
[ -n "$name" ] && [ -n "$zone" ] || die "--name and --zone are required"
[ $# -gt 0 ] || die "give the qgjax command after --"
[ "$1" = qgjax ] || die "the command must start with 'qgjax' (got '$1')"
shift
repo=$(cd "$here/.." && pwd)
tpu=(gcloud compute tpus tpu-vm)
[ -n "$project" ] && tpu+=("$project")
if [ "$create" = 1 ]; then
  [ -n "$accel" ] || die "--create needs --accelerator (e.g. v5litepod-64)"
  run "${tpu[@]}" create "$name" --zone="$zone" --accelerator-type="$accel" --version="$version" $spot
fi
tarball=/tmp/qgjax-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo src).tar.gz
run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
run "${tpu[@]}" scp "$tarball" "$name:qgjax.tar.gz" --zone="$zone" --worker=all
remote="mkdir -p qgjax && tar -xzf qgjax.tar.gz -C qgjax && cd qgjax && JAX_ACCELERATOR=tpu bash tools/setup_env.sh"
run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all --command="$remote"
cmd="cd qgjax && $HUGE_PAGES_ENV QGJAX_DISTRIBUTED=auto .venv/bin/qgjax $(quote_args "$@")"
run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all --command="$cmd"
