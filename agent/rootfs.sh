#!/bin/sh
# The agent image's whole file system, assembled in the build stage (agent/Dockerfile) into
# the folder $1: Python's interpreter and the parts of its standard library the agent can use,
# the agent with its packages (/opt/fleet-agent), openssl (the agent makes its certificate
# with it) and nsenter (system tasks run in the host's namespaces), and exactly the shared
# libraries those load, found with ldd. No shell, no package manager, no documentation.
set -eu
ROOT=$1
PYTHON=$(readlink -f "$(command -v python3)")
STDLIB=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')

mkdir -p "$ROOT"
# Merged /usr keeps /bin, /lib... as links into /usr; the copies below keep them so.
for top in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$top" ]; then cp -a "/$top" "$ROOT/"; fi
done

keep() {
  for path in "$@"; do
    case $path in "$ROOT"/*) continue ;; esac  # a wheel's own library, copied with it
    # A path through a link is kept as the link and what it points to.
    folder=$(readlink -f "$(dirname "$path")")
    cp -a --parents "$folder/$(basename "$path")" "$ROOT"
    target=$(readlink -f "$path")
    [ -e "$ROOT$target" ] || cp -a --parents "$target" "$ROOT"
  done
}

keep "$PYTHON" /usr/bin/python3 "$(command -v openssl)" "$(command -v nsenter)"
cp -a --parents "$STDLIB" /opt/fleet-agent "$ROOT"
# Parts of the standard library a server agent never imports: tests, GUI, REPL helpers, the
# installers of pip and distutils, and databases whose libraries the image leaves out.
cd "$ROOT$STDLIB"
rm -rf test idlelib tkinter turtledemo turtle.py ensurepip lib2to3 pydoc_data distutils \
  sqlite3 dbm curses sitecustomize.py config-* \
  lib-dynload/_sqlite3.* lib-dynload/_curses* lib-dynload/_dbm.* lib-dynload/_gdbm.* \
  lib-dynload/readline.* lib-dynload/_tkinter.* lib-dynload/_test*.* lib-dynload/xx*.* \
  lib-dynload/_ctypes_test.* lib-dynload/nis.* lib-dynload/_crypt.* lib-dynload/ossaudiodev.* \
  lib-dynload/spwd.* __pycache__/turtle.* __pycache__/sitecustomize.*
cd /
rm -rf "$ROOT/opt/fleet-agent/bin"

# Every shared library any of those loads, and glibc's unwinder, which it loads itself
# when a thread exits during interpreter shutdown.
libraries=$(
  find "$ROOT" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) \
    -exec sh -c 'ldd "$1" 2>/dev/null' _ {} \; |
    sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p' | sort -u
)
unwinder=$(ldconfig -p | sed -n 's/.*libgcc_s\.so\.1 .*=> //p' | head -n 1)
keep $libraries "$unwinder"

# What glibc, openssl and Python read from /etc; the loader's cache made for this root.
cp -a --parents /etc/passwd /etc/group /etc/nsswitch.conf /etc/ld.so.conf /etc/ld.so.conf.d \
  /etc/ssl/openssl.cnf "$ROOT"
openssl_dir=$(openssl version -d | sed 's/^OPENSSLDIR: "\(.*\)"$/\1/')
if [ -e "$openssl_dir/openssl.cnf" ]; then keep "$openssl_dir/openssl.cnf"; fi
ldconfig -r "$ROOT"
mkdir -p -m 1777 "$ROOT/tmp"
