#!/usr/bin/env bash
# 8 sampled expansions per query from the aqe_n8 run's aligned generator (test + dev) and the base one (dev),
# the generate_sampled stage's sampling (T=1, top-k 50, top-p 0.95, 64 new tokens); resumable.
# W (the run) and O (the outputs) default to the half run; the full run's:
#   W=/work/runs/aqe_n8_full O=/work/runs/aqe_n8_full_multi bash docs/runs/aqe_n8_multi/gen.sh
set -e
cd "$(dirname "$0")/../../.."
# N (samples per query, default 8) and WHICH (default: all three outputs) narrow it, e.g.
#   N=4 WHICH="aligned_test aligned_dev" W=... O=... bash docs/runs/aqe_n8_multi/gen.sh
W=${W:-/work/runs/aqe_n8}; O=${O:-/work/runs/aqe_n8_multi}; N=${N:-8}; WHICH=${WHICH:-aligned_test aligned_dev base_dev}
gen() { W=$W bash docs/runs/aqe_n4_temperature/sample.sh "$1" "$2" 1.0 $N "$3"; }   # model split output (T = 1)
for w in $WHICH; do
  case $w in
    aligned_test) gen $W/align/export test $O/sampled_aligned_test ;;
    aligned_dev) gen $W/align/export dev $O/sampled_aligned_dev ;;
    base_dev) gen smollm2-135m-instruct dev $O/sampled_base_dev ;;
    base_test) gen smollm2-135m-instruct test $O/sampled_base_test ;;   # the runs' generate_sampled, when n >= N
    *) echo "gen.sh: unknown output '$w' in WHICH" >&2; exit 2 ;;
  esac
done
