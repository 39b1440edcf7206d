#!/bin/bash
# build.sh BINARY DOCS-DIR VERSION OUT-DIR: lay the package tree out and
# build OUT-DIR/fsha_VERSION_ARCH.deb with dpkg-deb (make deb runs it;
# nothing here fetches anything). DOCS-DIR holds fsha.8 and fsha.bash (go
# run -tags gendocs ./cmd/fsha gendocs DOCS-DIR). Prints the .deb's path.
set -euo pipefail
bin=$1 docs=$2 version=$3 out=$4
here=$(cd "$(dirname "$0")/.." && pwd)   # packaging/
top=$(cd "$here/.." && pwd)
arch=$(dpkg --print-architecture)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"
inst() { install -D -m "$1" "$2" "$root/$3"; }

inst 755 "$bin" usr/bin/fsha
inst 644 "$here/fsha.service" lib/systemd/system/fsha.service
for f in fsha.conf public_addresses events.d/README; do
	inst 644 "$here/etc/fsha/$f" "etc/fsha/$f"
done
for f in "$here"/events.d/*; do
	inst 755 "$f" "usr/share/fsha/events.d/$(basename "$f")"
done
inst 644 "$here/examples/nodes" usr/share/doc/fsha/examples/nodes
inst 644 "$here/examples/grafana-dashboard.json" usr/share/doc/fsha/examples/grafana-dashboard.json
inst 644 "$top/README.md" usr/share/doc/fsha/README.md
inst 644 "$top/DESIGN.md" usr/share/doc/fsha/DESIGN.md
gzip -9n "$root/usr/share/doc/fsha/README.md" "$root/usr/share/doc/fsha/DESIGN.md"
inst 644 "$docs/fsha.8" usr/share/man/man8/fsha.8
gzip -9n "$root/usr/share/man/man8/fsha.8"
inst 644 "$docs/fsha.bash" usr/share/bash-completion/completions/fsha

mkdir -p "$root/DEBIAN"
(cd "$root" && find etc -type f | sed 's|^|/|' | sort) > "$root/DEBIAN/conffiles"
for f in postinst prerm postrm; do
	install -m 755 "$here/deb/$f" "$root/DEBIAN/$f"
done
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
	"$here/deb/control.in" > "$root/DEBIAN/control"
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/fsha_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
