#!/usr/bin/env bash
# Runs ember-agent's integration tests (tests/host_confine.rs, host_pty.rs, host.rs)
# against the agent running as PID 1 of a real guest: QEMU microvm (KVM when
# available), the agent on the `ember.agent` virtio-serial port, a busybox ext4
# rootfs on a virtio disk found by its serial. Needs root, qemu-system-x86_64,
# cpio, mkfs.ext4, /bin/busybox (static) and a guest kernel (EMBER_KERNEL, default
# /var/lib/ember/guest/vmlinux).
#
#   crates/ember-agent/scripts/test-in-vm.sh            # all tests, then Shutdown
#   crates/ember-agent/scripts/test-in-vm.sh oom        # a test name filter
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
kernel=${EMBER_KERNEL:-/var/lib/ember/guest/vmlinux}
work=$(mktemp -d /var/tmp/ember-agent-vm.XXXXXX)
qemu_pid=
cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then kill "$qemu_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "building the static agent" >&2
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -q -p ember-agent --target x86_64-unknown-linux-gnu)
agent="$repo/target/x86_64-unknown-linux-gnu/release/ember-agent"

stage="$work/initramfs"
mkdir -p "$stage"/{dev,proc,sys,run,tmp,mnt}
cp "$agent" "$stage/init"
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) > "$work/initramfs.cpio"

root="$work/rootfs"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"; done
mkfs.ext4 -q -d "$root" "$work/rootfs.img" 64M

# TCG by default: nested KVM is often unusable on CI hosts. EMBER_ACCEL=kvm to try it.
accel=${EMBER_ACCEL:-tcg}
cpu=max; [ "$accel" = kvm ] && cpu=host
extra=
if [ "$accel" = tcg ]; then
  # Under emulation TSC calibration can hang: tell the kernel the rate.
  khz=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
  extra="tsc_early_khz=${khz:-2000000}"
  accel="tcg,thread=multi"
fi
sock="$work/agent.sock"
qemu-system-x86_64 \
  -machine microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on,pcie=off \
  -accel "$accel" -cpu "$cpu" -smp 2 -m 512M \
  -nodefaults -no-user-config -nographic -no-reboot \
  -chardev "file,id=console,path=$work/console.log" -serial chardev:console \
  -device virtio-serial-device,max_ports=2 \
  -chardev "socket,id=agent,path=$sock,server=on,wait=off" \
  -device virtserialport,chardev=agent,name=ember.agent \
  -device virtio-rng-device \
  -drive "id=drive0,file=$work/rootfs.img,format=raw,if=none,cache=unsafe,readonly=off" \
  -device virtio-blk-device,drive=drive0,serial=rootfs \
  -kernel "$kernel" -initrd "$work/initramfs.cpio" \
  -append "console=ttyS0 reboot=t panic=-1 loglevel=4 $extra EMBER_AGENT_LOG=debug" &
qemu_pid=$!

for _ in $(seq 1 600); do
  grep -q "ember-agent: ready" "$work/console.log" 2>/dev/null && break
  kill -0 "$qemu_pid" || { cat "$work/console.log"; exit 1; }
  sleep 0.1
done
grep -q "ember-agent: ready" "$work/console.log" || { cat "$work/console.log"; echo "agent not ready" >&2; exit 1; }
echo "guest ready (accel $accel)" >&2

status=0
(cd "$repo" && export EMBER_AGENT_TEST_VM_SOCK="$sock" EMBER_AGENT_TEST_VM_SERIAL=rootfs \
  EMBER_AGENT_TEST_VM_SHUTDOWN=1 &&
  cargo test -q -p ember-agent --test host_confine -- --test-threads 1 --nocapture "$@" &&
  cargo test -q -p ember-agent --test host_pty -- --test-threads 1 --nocapture "$@" &&
  cargo test -q -p ember-agent --test host -- --test-threads 1 --nocapture "$@") || status=$?
sleep 1
echo "---- guest console ----" >&2
cat "$work/console.log" >&2
if [ $# -eq 0 ] && kill -0 "$qemu_pid" 2>/dev/null; then
  echo "the guest did not power off after Shutdown" >&2
  status=1
fi
exit $status
