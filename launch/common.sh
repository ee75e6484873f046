# Shared by the launchers: `run` prints each command and executes it unless DRY_RUN=1.
# shellcheck shell=bash
DRY_RUN=${DRY_RUN:-0}
run() {
  printf '+ %s\n' "$*"
  if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}
quote_args() { local out="" a; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; printf '%s' "${out# }"; }
die() { echo "error: $*" >&2; exit 2; }
