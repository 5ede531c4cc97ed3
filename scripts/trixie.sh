#!/usr/bin/env bash
# Unpacks packages from Debian trixie into a side directory (default /opt/ember/trixie)
# without touching the system's bookworm packages: a private apt state, `apt-get
# download`, `dpkg -x`. Usage: trixie.sh PKG... ; prints the directory.
set -euo pipefail
dest=${EMBER_TRIXIE_DIR:-/opt/ember/trixie}
state=/var/cache/ember/trixie-apt
mkdir -p "$dest" "$state"/{lists/partial,archives/partial,debs} "$state/etc"
if [ ! -f "$state/etc/sources.list" ]; then
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$state/etc/sources.list"
fi
opts=(-o "Dir::State=$state" -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state"
      -o "Dir::Etc::SourceList=$state/etc/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
      -o "Dir::State::status=$state/status" -o "APT::Architecture=amd64")
touch "$state/status"
need=()
for p in "$@"; do
  [ -f "$dest/.done-$p" ] || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ -z "$(ls -A "$state/lists" 2>/dev/null | grep -v partial)" ]; then
    apt-get "${opts[@]}" update -qq >&2
  fi
  for p in "${need[@]}"; do
    (cd "$state/debs" && rm -f "${p}"_*.deb && apt-get "${opts[@]}" -o APT::Sandbox::User=root download -qq "$p" >&2)
    dpkg -x "$state/debs/${p}"_*.deb "$dest"
    touch "$dest/.done-$p"
  done
fi
echo "$dest"
