# Shared by the launchers: `run` prints each command and executes it unless DRY_RUN=1.
# shellcheck shell=bash
DRY_RUN=${DRY_RUN:-0}
run() {
  printf '+ %s\n' "$*"
  if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}
quote_args() { local out="" a; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; printf '%s' "${out# }"; }
# The launched qgjax processes re-exec once with glibc's huge-page tunable for XLA:CPU's buffers
# (qgjax.host_allocator; opt-in, 10-20% off a large CPU step). QGJAX_HUGE_PAGES=0 turns it off.
HUGE_PAGES_ENV="QGJAX_HUGE_PAGES=${QGJAX_HUGE_PAGES:-1}"
die() { echo "error: $*" >&2; exit 2; }
