#!/bin/sh
# PID 1 of a local server. There is no systemd in the container, so this does what the init
# system does on a cloud VM: run cloud-init's stages in order, start sshd before the final
# stage (so SSH answers when the phone-home arrives), start the services enabled for runlevel 2,
# and stop them all on SIGTERM (`docker stop`), like a shutdown.
set -u

started=""
shutdown() {
  for service in $started; do "/etc/init.d/$service" stop >/dev/null 2>&1; done
  [ -n "${sshd_pid:-}" ] && kill -TERM "$sshd_pid" 2>/dev/null
  exit 0
}
trap shutdown TERM INT

# Nested Docker needs writable cgroup hierarchies (cgroup v1 hosts mount them read-only).
for d in /sys/fs/cgroup/*/; do mount -o remount,bind,rw "$d" 2>/dev/null; done

cloud-init init --local
cloud-init init
mkdir -p /run/sshd
/usr/sbin/sshd -D -e 2>>/var/log/sshd.log &
sshd_pid=$!
cloud-init modules --mode=config
for link in /etc/rc2.d/S*; do
  service=$(basename "$link" | sed 's/^S[0-9]*//')
  case "$service" in ssh|cloud-*|bootlogs|rc.local|rmnologin|"*") continue ;; esac
  "/etc/init.d/$service" start >/dev/null 2>&1 && started="$service $started"
done
cloud-init modules --mode=final

while :; do
  sleep 3600 &
  wait $!
done
