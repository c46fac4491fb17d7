#!/bin/sh
# Build what a loft VM boots into OUT (default build/guest): the Debian cloud kernel
# (vmlinuz, the current dependency of linux-image-cloud-amd64, never a pinned version),
# its virtio modules (virtio_net with the two failover modules it needs), loft's guest
# agent (static), and the initramfs (initrd.gz) made of busybox-static, those modules,
# guest/init and the agent. Quick when all is there.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
out=${1:-build/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)
modules="virtio_ring virtio virtio_mmio virtio_blk virtio_console failover net_failover virtio_net"

pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
	awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
if [ -z "$pkg" ]; then
	echo "guest: apt knows no linux-image-cloud-amd64 (run apt-get update)" >&2
	exit 1
fi
fetch=0
[ -f "$out/vmlinuz" ] && [ "$(cat "$out/kernel.pkg" 2>/dev/null)" = "$pkg" ] || fetch=1
for m in $modules; do [ -f "$out/modules/$m.ko" ] || fetch=1; done
if [ "$fetch" = 1 ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download -q "$pkg" 2>&1 | grep -v unsandboxed >&2 || true)
	deb=$(ls "$tmp"/*.deb)
	dpkg-deb -x "$deb" "$tmp/x"
	rm -rf "$out/modules" && mkdir -p "$out/modules"
	for m in $modules; do
		find "$tmp/x/lib/modules" -name "$m.ko" -exec cp {} "$out/modules/" \;
		[ -f "$out/modules/$m.ko" ] || { echo "guest: $pkg has no $m.ko" >&2; exit 1; }
	done
	cp "$tmp"/x/boot/vmlinuz-* "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
	echo "$pkg" > "$out/kernel.pkg"
	echo "guest: kernel from $pkg"
fi

if [ ! -x "$out/loft-agent" ] || [ "$src/agent.c" -nt "$out/loft-agent" ]; then
	gcc -static -O2 -Wall -Wextra -Werror -o "$out/loft-agent.tmp" "$src/agent.c"
	strip "$out/loft-agent.tmp"
	mv "$out/loft-agent.tmp" "$out/loft-agent"
	echo "guest: agent built"
fi

initrd="$out/initrd.gz"
stale=0
for f in "$out/loft-agent" "$src/init" "$out/kernel.pkg" /bin/busybox "$out"/modules/*.ko; do
	[ -f "$initrd" ] && [ ! "$f" -nt "$initrd" ] || stale=1
done
if [ "$stale" = 1 ]; then
	root=$(mktemp -d)
	mkdir -p "$root/usr/bin" "$root/lib/modules" "$root/proc" "$root/sys" "$root/dev" \
		"$root/ws" "$root/usr-local" "$root/usr/local" "$root/tmp"
	ln -s usr/bin "$root/bin" && ln -s usr/bin "$root/sbin" && ln -s bin "$root/usr/sbin"
	cp /bin/busybox "$root/usr/bin/busybox"
	for applet in $(/bin/busybox --list); do
		[ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/usr/bin/$applet"
	done
	cp "$out/loft-agent" "$root/usr/bin/loft-agent"
	cp "$out"/modules/*.ko "$root/lib/modules/"
	cp "$src/init" "$root/init" && chmod 0755 "$root/init"
	(cd "$root" && find . | sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) > "$initrd.tmp"
	rm -rf "$root"
	mv "$initrd.tmp" "$initrd"
	echo "guest: initramfs built ($(du -k "$initrd" | cut -f1) KiB)"
fi
