#!/usr/bin/env bash
# Builds the Ember guest kernel (vmlinux, PVH-bootable) from Debian's linux-source-6.1
# and the config fragment beside this script. The result is cached under a key made of
# the source package version, the fragment and this script, so a rebuild only happens
# when one of them changes. Prints the path of the cached vmlinux on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/kernel/ember.config"
cache_root=${EMBER_CACHE:-/var/cache/ember}
src_tar=$(ls /usr/src/linux-source-6.1.tar.xz 2>/dev/null || true)
if [ -z "$src_tar" ]; then
  echo "linux-source-6.1 is not installed: apt-get install linux-source-6.1" >&2
  exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (echo "$src_version"; cat "$fragment" "$0") | sha256sum | cut -c1-16)
out="$cache_root/kernel/$key"
if [ -f "$out/vmlinux" ]; then
  echo "$out/vmlinux"
  exit 0
fi
work="$cache_root/kernel/build-$key"
rm -rf "$work"; mkdir -p "$work"
echo "building guest kernel $src_version (key $key) in $work" >&2
tar -C "$work" -xf "$src_tar"
cd "$work"/linux-source-6.1
make -s KCONFIG_ALLCONFIG="$fragment" allnoconfig >&2
# olddefconfig drops options whose dependencies are unmet without a word: check every line.
missing=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  name=${line%%=*}; value=${line#*=}
  if [ "$value" = n ]; then
    if grep -q "^$name=" .config; then echo "config: $name should be off" >&2; missing=1; fi
  elif ! grep -qx "$line" .config; then
    echo "config: $line did not survive (have: $(grep "^$name=" .config || echo unset))" >&2; missing=1
  fi
done < "$fragment"
[ "$missing" = 0 ] || { echo "config fragment not satisfied" >&2; exit 1; }
start=$(date +%s)
make -s -j"$(nproc)" vmlinux >&2
end=$(date +%s)
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp .config "$out.tmp/config"
make -s kernelrelease > "$out.tmp/release"
echo "$((end - start))" > "$out.tmp/build-seconds"
rm -rf "$out"; mv "$out.tmp" "$out"
cd /; rm -rf "$work"
echo "$out/vmlinux"
