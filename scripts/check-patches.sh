#!/usr/bin/env bash
# Each crate under patches/ is the crate as published plus patches/<crate>.diff, and the diff is
# what moving to a new upstream version re-applies. This checks that every diff still says what
# its directory holds: it fetches the published crates (crates.io, through cargo), compares each
# with its directory and fails, with the difference, where a change was made to the one and not
# the other. The diffs' headers (file names, times, options) are not compared.
set -euo pipefail
cd "$(dirname "$0")/.."

# crate, version: as [patch.crates-io] in Cargo.toml pins them.
crates=(boringtun:0.7.1 is:0.12.0 turmoil:0.7.2 quinn-udp:0.6.3)
# Files of the published crate that the directories leave out (patches/README.md).
excludes=(-x Cargo.lock -x Cargo.toml.orig -x .cargo_vcs_info.json -x .cargo-ok -x .cargo
  -x .github -x .gitignore)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A throwaway package that depends on the published versions, so that `cargo fetch` unpacks
# them into the registry's sources (the workspace's own patches do not apply to it).
mkdir -p "$work/fetch/src"
: >"$work/fetch/src/lib.rs"
{
  printf '[package]\nname = "fetch-published"\nversion = "0.0.0"\nedition = "2021"\n\n'
  printf '[workspace]\n\n[dependencies]\n'
  for entry in "${crates[@]}"; do
    printf '%s = { version = "=%s", default-features = false }\n' "${entry%%:*}" "${entry##*:}"
  done
} >"$work/fetch/Cargo.toml"
cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"

hunks() { # the lines of a diff that say what changed, not where or when
  grep -v -e '^diff ' -e '^--- ' -e '^+++ ' -e '^Only in ' "$1" || true
}

failed=0
for entry in "${crates[@]}"; do
  name=${entry%%:*}
  version=${entry##*:}
  published=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d \
    -name "$name-$version" | head -n 1)
  if [ -z "$published" ]; then
    echo "check-patches: $name $version was not fetched" >&2
    exit 1
  fi
  cp -r "$published" "$work/$name-$version"
  cp -r "patches/$name" "$work/$name"
  (cd "$work" && diff -ru "${excludes[@]}" "$name-$version" "$name" >"$work/$name.now.diff" || true)
  if diff <(hunks "$work/$name.now.diff") <(hunks "patches/$name.diff") >"$work/$name.gap"; then
    echo "check-patches: $name: patches/$name.diff matches patches/$name/"
  else
    echo "check-patches: $name: patches/$name.diff does not match patches/$name/ (< the" \
      "directory against the published crate, > the diff):" >&2
    head -n 40 "$work/$name.gap" >&2
    failed=1
  fi
done
exit "$failed"
