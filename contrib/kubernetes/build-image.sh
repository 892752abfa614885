#!/bin/sh
# Builds the fdgrab agent's container image from a release binary, with no base
# image: one layer holding the binary, the shared libraries it links (as ldd
# lists them, at their own paths) and the empty directories the DaemonSet mounts
# over. Nothing is pulled.
#
#   contrib/kubernetes/build-image.sh [BINARY] [OUT.tar] [NAME]
#
# Defaults: target/release/fdgrab, fdgrab-agent.oci.tar,
# docker.io/library/fdgrab-agent:VERSION (VERSION from `BINARY --version`).
# Load the archive with `ctr -n k8s.io images import OUT.tar` on a node, or push it
# with `skopeo copy oci-archive:OUT.tar docker://REGISTRY/fdgrab-agent:VERSION`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-target/release/fdgrab}
out=${2:-fdgrab-agent.oci.tar}
version=$("$bin" --version | awk '{print $2}')
name=${3:-docker.io/library/fdgrab-agent:$version}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/run/fdgrab" "$root/etc/fdgrab" "$root/tmp" \
         "$root/host/seccomp" "$root/proc" "$root/dev" "$root/sys"
chmod 1777 "$root/tmp"
# Debug info is of no use in the image: strip a copy (the release profile keeps
# some for profiling).
cp "$bin" "$root/usr/local/bin/fdgrab"
strip --strip-debug "$root/usr/local/bin/fdgrab" 2>/dev/null || true
# The dynamic loader and libraries, from ldd's "name => path" and "/path" lines.
ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\//{print $1}' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# The interpreter path in the binary may be a symlink (/lib64 -> /usr/lib64 ...):
# ldd printed the path the binary asks for, which is the one copied above.

exec /usr/bin/python3 "$here/oci-image.py" "$root" "$out" "$name" \
  --entrypoint '["/usr/local/bin/fdgrab"]' \
  --cmd '["-v", "agent", "--socket", "/run/fdgrab/agent.sock", "--policy", "/etc/fdgrab/agent.toml", "--audit", "-"]'
