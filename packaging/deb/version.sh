#!/bin/sh
# version.sh [GIT-DESCRIBE]: the Debian package version for a git describe
# (default: this checkout's, as make build links into fsha --version).
#   v1.2.3                 -> 1.2.3
#   v1.2.3-4-gabc1234      -> 1.2.3+git4.gabc1234
#   abc1234 (no tag yet)   -> 0~git20250101.120000.abc1234 (commit time, UTC:
#                             later commits sort later; a first tag sorts above)
#   ...-dirty              -> ... .dirty appended
# Upstream versions may not hold '-' (no Debian revision here), nor start
# with anything but a digit.
set -eu
d=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo devel)}
dirty=
case $d in *-dirty) dirty=.dirty; d=${d%-dirty} ;; esac
d=${d#v}
# no tag: git describe --always gives the abbreviated commit
if printf '%s' "$d" | grep -Eqx '[0-9a-f]{7,40}'; then
	ts=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d.%H%M%S "$d" 2>/dev/null || echo 0)
	echo "0~git$ts.$d$dirty"
	exit 0
fi
case $d in
[0-9]*-[0-9]*-g[0-9a-f]*)
	n=${d%-g*}; tag=${n%-*}; n=${n##*-}; h=${d##*-g}
	v=$(printf '%s' "$tag" | tr -c 'A-Za-z0-9.+~\n' '~')+git$n.g$h ;;
[0-9]*)
	v=$(printf '%s' "$d" | tr -c 'A-Za-z0-9.+~\n' '~') ;;
*)
	v=0~$(printf '%s' "$d" | tr -c 'A-Za-z0-9.+~\n' '~') ;;
esac
echo "$v$dirty"
