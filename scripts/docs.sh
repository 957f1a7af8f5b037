#!/usr/bin/env bash
# API reference: configures the `docs` preset (build/docs: no tests, examples, benchmarks or
# tools), builds its `docs` target (Doxygen over include/toptheta/ without reference/, see
# docs/Doxyfile.in) and prints the number of Doxygen warnings and their most frequent kinds.
# Output: build/docs/docs/html/index.html; warnings: build/docs/docs/doxygen-warnings.log.
#
# Usage: ./scripts/docs.sh [--werror]
#   --werror   fail when there is any warning (TOPTHETA_DOCS_WARN_AS_ERROR=ON, for CI)
# Without --werror it exits 0 whatever the warning count (non-zero only if Doxygen fails).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

werror=OFF
for arg in "$@"; do
  case $arg in
    --werror) werror=ON ;;
    -h | --help)
      sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) toptheta_die "unknown argument '$arg' (usage: scripts/docs.sh [--werror])" ;;
  esac
done

# Only what the docs preset needs (CMake configures the project, so Eigen and a compiler too).
docs_packages=(cmake ninja-build g++ libeigen3-dev "${TOPTHETA_DEB_DOCS_PACKAGES[@]}")
toptheta_try_install_packages "${docs_packages[@]}" ||
  toptheta_warn "could not install some of: ${docs_packages[*]}"
command -v doxygen >/dev/null 2>&1 || toptheta_die "doxygen is not installed (Debian package: doxygen)"

log=build/docs/docs/doxygen-warnings.log
toptheta_log "Configuring (preset: docs, TOPTHETA_DOCS_WARN_AS_ERROR=$werror)"
cmake --preset docs -DTOPTHETA_DOCS_WARN_AS_ERROR="$werror" >/dev/null
rc=0
toptheta_log "Building the docs target"
cmake --build --preset docs || rc=$?

count=0
if [[ -f $log ]]; then
  # Under --werror Doxygen labels its warnings "error:".
  count=$(grep -cE ': (warning|error): ' "$log" || true)
fi
if [[ $count -gt 0 ]]; then
  # Kinds: "undocumented <what>" for the not-documented warnings, otherwise the message with
  # quoted names and numbers elided.
  toptheta_log "Most frequent kinds of Doxygen warnings"
  sed -nE 's/^.*: (warning|error): //p' "$log" |
    sed -E \
      -e 's/^Member .* \(([a-z ]+)\) of (file|namespace|class|struct|union|group) .* is not documented\.$/undocumented \1 (member of a \2)/' \
      -e 's/^Compound .* is not documented\.$/undocumented class or struct/' \
      -e "s/'[^']*'/'...'/g" -e 's/[0-9]+/N/g' |
    sort | uniq -c | sort -rn | head -n 10
fi
toptheta_log "Doxygen warnings: $count (log: $log); HTML: build/docs/docs/html/index.html"
exit "$rc"
