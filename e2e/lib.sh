# Shared shell helpers for the project's scripts. Sourced, not run.

STRAIT_CACHE=${STRAIT_CACHE:-/var/cache/strait}
export STRAIT_CACHE
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say()  { printf '\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf '\033[33mwarning: %s\033[0m\n' "$*" >&2; }
die()  { printf '\033[31merror: %s\033[0m\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "$1 needs root (network namespaces, XFRM, apt): run it with sudo"
}

need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed: $2"
}

# Cargo and Go live in root's home on these machines; make them findable under sudo too.
for d in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/go/bin; do
  [ -d "$d" ] && case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d" ;; esac
done
export PATH
