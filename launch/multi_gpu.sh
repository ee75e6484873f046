#!/usr/bin/env bash
# Run one qgjax command over the GPUs of this host, or of several hosts.
#
#   launch/multi_gpu.sh [--mode process-per-gpu|process-per-host] [--gpus 8] \
#       [--hosts h1,h2] [--port 12355] [--dry-run] -- qgjax train --config configs/dpo.py
#
# process-per-host (default): one process sees all local GPUs (simplest; the mesh spans them).
# process-per-gpu: one process per GPU, pinned with QGJAX_LOCAL_DEVICE_IDS, joined through a
# coordinator on the first host (QGJAX_COORDINATOR_ADDRESS); with --hosts, the processes of
# host k start over ssh with process ids k*gpus .. k*gpus+gpus-1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); . "$here/common.sh"
mode=process-per-host gpus="" hosts="" port=12355
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) mode=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --hosts) hosts=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
[ $# -gt 0 ] && [ "$1" = qgjax ] || die "give the command after --, starting with 'qgjax'"
shift
repo=$(cd "$here/.." && pwd)
qgjax="$repo/.venv/bin/qgjax"
if [ -z "$gpus" ]; then
  gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
  [ "${gpus:-0}" -gt 0 ] || { [ "$DRY_RUN" = 1 ] && gpus=8; } || die "no GPU found; pass --gpus N"
fi
IFS=, read -r -a host_list <<< "${hosts:-localhost}"
nhosts=${#host_list[@]}
if [ "$mode" = process-per-host ]; then
  nproc=$nhosts
else
  [ "$mode" = process-per-gpu ] || die "--mode must be process-per-gpu or process-per-host"
  nproc=$((nhosts * gpus))
fi
coordinator="${host_list[0]}:$port"
pids=()
pid=0
for h in "${host_list[@]}"; do
  if [ "$mode" = process-per-host ]; then slots=("all"); else slots=($(seq 0 $((gpus - 1)))); fi
  for gpu in "${slots[@]}"; do
    envs=(QGJAX_COORDINATOR_ADDRESS="$coordinator" QGJAX_NUM_PROCESSES="$nproc" QGJAX_PROCESS_ID="$pid")
    [ "$gpu" != all ] && envs+=(QGJAX_LOCAL_DEVICE_IDS="$gpu")
    [ "$nproc" = 1 ] && envs=()
    envs+=("$HUGE_PAGES_ENV")
    if [ "$h" = localhost ] || [ "$nhosts" = 1 ]; then
      printf '+ %s\n' "${envs[*]} $qgjax $(quote_args "$@")"
      [ "$DRY_RUN" = 1 ] || { env "${envs[@]}" "$qgjax" "$@" & pids+=($!); }
    else
      run ssh "$h" "cd $(printf '%q' "$repo") && ${envs[*]} .venv/bin/qgjax $(quote_args "$@")" &
      pids+=($!)
    fi
    pid=$((pid + 1))
  done
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
