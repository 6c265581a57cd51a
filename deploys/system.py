"""The system baseline: host name, time zone, kernel settings, swap, security updates, the
admin user's authorized keys, SSH hardening and a host firewall.

The admin user's ~/.ssh/authorized_keys is written whole from the spec's ssh.authorized_keys
and the engine's deploy key: a key removed from the spec stops working at the next install,
one added starts working (cloud-init only sets them at the first boot).

The firewall lets in established traffic, loopback, ICMP, SSH and traffic from Docker's own
bridges; the agent port only from the control plane (both for an agent on the host network
and for one whose port Docker publishes, which bypasses INPUT); and drops everything else
that comes in. It uses nftables when `nft` is installed, else iptables, and is re-applied at
boot by a small service (systemd unit or SysV script, whichever init the server has).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex

from pyinfra import host
from pyinfra.api import OperationError, StringCommand, deploy, operation
from pyinfra.facts.files import Sha256File
from pyinfra.facts.server import LinuxDistribution, Sysctl

from deploys.apt import packages, packages_facts
from deploys.facts import (
    AuthorizedKeys,
    ContainerRuntime,
    FactAsk,
    FirewallMarks,
    HostName,
    Installed,
    Service,
    SwapFile,
    ZoneInfo,
)
from deploys.support import (
    Commands,
    FileWrite,
    chained,
    changes,
    control_service,
    fact,
    paths_ask,
    read_ahead,
    skip,
    write_files,
)
from engine.model import Labels, SystemInstall

SWAP_PATH = "/swapfile"
SYSCTL_PATH = "/etc/sysctl.d/90-fleet.conf"
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/10-fleet.conf"
FIREWALL_SCRIPT = "/usr/local/sbin/fleet-firewall"
FIREWALL_UNIT = "/etc/systemd/system/fleet-firewall.service"
FIREWALL_INITD = "/etc/init.d/fleet-firewall"
FIREWALL_TOOLS = ("nft", "iptables", "systemctl")
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
UPGRADE_ORIGINS = "/etc/apt/apt.conf.d/52fleet-unattended-upgrades"

# Network hardening every server gets; the spec's install.system.sysctl comes on top.
BASELINE_SYSCTL: Labels = (
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
    ("net.ipv4.conf.all.accept_source_route", "0"),
    ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
    ("net.ipv4.tcp_syncookies", "1"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.default.accept_redirects", "0"),
)
# Settings a container has its own copy of; every other one belongs to the host's kernel.
NAMESPACED_SYSCTL = ("net.", "kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")

_SIZE = re.compile(r"^(0|[1-9][0-9]*)([MG]?)$")


@deploy("system")
def system(
    install: SystemInstall,
    *,
    hostname: str,
    admin: str,
    ssh_port: int,
    agent_port: int,
    control_plane: tuple[str, ...],
    keys: tuple[str, ...] = (),
) -> None:
    """The baseline for one server; `admin` is the user the engine logs in as, with `keys`
    (none: its keys are left as they are)."""
    read_ahead(system_facts(install, admin=admin, keys=keys))
    host_name(name="Set the host name", hostname=hostname)
    # curl: the install reads Docker's state through its socket with it (deploys.facts) and
    # runs the agent's health check with it.
    base = ("tzdata", "curl")
    wanted = (*base, "unattended-upgrades") if install.unattended_upgrades else base
    packages(name="Install the base packages", present=wanted)
    timezone(name="Set the time zone", timezone=install.timezone)
    sysctl(name="Apply kernel settings", settings=install.sysctl)
    swap(name="Set up the swap file", size=install.swap)
    unattended_upgrades(
        name="Configure unattended security upgrades", enabled=install.unattended_upgrades
    )
    if keys:
        authorized_keys(name="Write the admin's authorized keys", admin=admin, keys=keys)
    sshd(name="Harden sshd", admin=admin)
    firewall(
        name="Apply the host firewall",
        ssh_port=ssh_port,
        agent_port=agent_port,
        control_plane=control_plane,
    )


def system_facts(
    install: SystemInstall, *, admin: str, keys: tuple[str, ...] = ()
) -> list[FactAsk]:
    """The facts the operations of `system` ask for (see deploys.support.read_ahead)."""
    upgrades = (AUTO_UPGRADES, UPGRADE_ORIGINS) if install.unattended_upgrades else (AUTO_UPGRADES,)
    return [
        (HostName, {}),
        *packages_facts(),
        (ZoneInfo, {"timezone": install.timezone}),
        (ContainerRuntime, {}),
        (Sysctl, {"keys": _sysctl_keys(install.sysctl)}),
        paths_ask([SYSCTL_PATH]),
        (ContainerRuntime, {}),
        (SwapFile, {"path": SWAP_PATH}),
        *([(LinuxDistribution, {})] if install.unattended_upgrades else []),
        paths_ask(upgrades),
        *([(AuthorizedKeys, {"user": admin})] if keys else []),
        (Sha256File, {"path": SSHD_DROP_IN}),
        (Service, {"service": "ssh"}),
        (Installed, {"commands": FIREWALL_TOOLS}),
        # The boot hook is a systemd unit or an init script, as the tools found decide.
        paths_ask([FIREWALL_SCRIPT, FIREWALL_UNIT]),
        paths_ask([FIREWALL_SCRIPT, FIREWALL_INITD]),
        (FirewallMarks, {}),
    ]


@operation()
def host_name(hostname: str) -> Commands:
    """Make `hostname` the host name now and at boot: with hostnamectl where it is
    installed, else with `hostname` and /etc/hostname."""
    found = fact(HostName)
    commands = []
    if found["hostnamectl"]:
        if found["name"] != hostname:
            commands.append(StringCommand("hostnamectl set-hostname", shlex.quote(hostname)))
    else:
        if found["name"] != hostname:
            commands.append(StringCommand("hostname", shlex.quote(hostname)))
        content = f"{hostname}\n"
        if found["file_sha256"] != hashlib.sha256(content.encode()).hexdigest():
            commands.append(FileWrite("/etc/hostname", content, "644"))
    if not commands:
        host.noop(f"the host name is {hostname}")
    yield from chained(commands)


@operation()
def timezone(timezone: str) -> Commands:
    """Point /etc/localtime at `timezone` (an IANA name such as Europe/Berlin)."""
    zone = fact(ZoneInfo, timezone=timezone)
    if zone["wanted"] is not None and zone["current"] == zone["wanted"]:
        host.noop(f"the time zone is {timezone}")
        return
    path = shlex.quote(f"/usr/share/zoneinfo/{timezone}")
    missing = shlex.quote(f"unknown time zone {timezone}: {path} does not exist")
    changes(ZoneInfo)
    yield from chained(
        [
            StringCommand(f"test -f {path} || {{ echo {missing} >&2; exit 1; }}"),
            StringCommand("ln -sfn", path, "/etc/localtime"),
            StringCommand("echo", shlex.quote(timezone), "> /etc/timezone"),
        ]
    )


def _sysctl_keys(settings: Labels) -> list[str]:
    """Every kernel setting the baseline and `settings` name, sorted."""
    return sorted(dict(BASELINE_SYSCTL) | dict(settings))


def _normal(value: object) -> str:
    """A kernel setting as sysctl prints it: words separated by one space."""
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return " ".join(str(value).split())


@operation()
def sysctl(settings: Labels) -> Commands:
    """Write the baseline and `settings` to /etc/sysctl.d and apply them.

    In a container only the settings it owns (network, IPC) are applied: the others would
    change the kernel of the machine the container runs on.
    """
    wanted = dict(BASELINE_SYSCTL) | dict(settings)
    live = fact(Sysctl, keys=_sysctl_keys(settings))
    runtime = fact(ContainerRuntime)
    if runtime:
        for key in sorted(k for k in wanted if not k.startswith(NAMESPACED_SYSCTL)):
            skip(
                f"sysctl {key}: not set because this server is a {runtime} container; "
                "the setting belongs to the host's kernel"
            )
        wanted = {k: v for k, v in wanted.items() if k.startswith(NAMESPACED_SYSCTL)}
    # A kernel without IPv6 lacks some baseline settings: leave those out. One the spec asks
    # for stays, so that sysctl says what is wrong with it.
    asked = dict(settings)
    wanted = {k: v for k, v in wanted.items() if k in live or k in asked}
    lines = "".join(f"{key} = {value}\n" for key, value in sorted(wanted.items()))
    content = f"# Written by the fleet engine.\n{lines}"
    put = write_files([(SYSCTL_PATH, content, "644")])
    stale = [k for k, v in wanted.items() if k not in live or _normal(live[k]) != _normal(v)]
    if not put and not stale:
        host.noop("kernel settings are applied")
        return
    changes(Sysctl, paths=[SYSCTL_PATH])
    yield from chained([*put, StringCommand("sysctl -q -p", SYSCTL_PATH)])


def _swap_bytes(size: str) -> int:
    """Bytes in a swap size such as 2G, 512M or 0."""
    match = _SIZE.match(size)
    if not match:
        raise OperationError(f"swap size {size!r} is not a size such as 2G, 512M or 0")
    number, unit = match.groups()
    return int(number) * {"": 1, "M": 1 << 20, "G": 1 << 30}[unit]


@operation()
def swap(size: str) -> Commands:
    """A swap file of `size` at /swapfile, enabled now and at boot; "0" removes it."""
    wanted = _swap_bytes(size)
    runtime = fact(ContainerRuntime)
    if runtime:
        if wanted:
            skip(
                f"swap: not set up because this server is a {runtime} container, "
                "which cannot enable swap"
            )
        else:
            host.noop("no swap wanted")
        return
    current = fact(SwapFile, path=SWAP_PATH)
    commands = []
    if wanted == 0:
        if current["size"] is None and not current["in_fstab"]:
            host.noop("no swap file, as wanted")
            return
        if current["active"]:
            commands.append(StringCommand("swapoff", SWAP_PATH))
        if current["in_fstab"]:
            commands.append(StringCommand(f"sed -i '\\#^{SWAP_PATH}[[:space:]]#d' /etc/fstab"))
        commands.append(StringCommand("rm -f", SWAP_PATH))
        yield from chained(commands)
        return
    if current["size"] != wanted:
        if current["active"]:
            commands.append(StringCommand("swapoff", SWAP_PATH))
        commands += [
            StringCommand(
                f"rm -f {SWAP_PATH} && {{ fallocate -l {wanted} {SWAP_PATH}"
                f" || dd if=/dev/zero of={SWAP_PATH} bs=1M count={wanted >> 20} status=none; }}"
            ),
            StringCommand("chmod 600", SWAP_PATH),
            StringCommand("mkswap", SWAP_PATH),
            StringCommand("swapon", SWAP_PATH),
        ]
    elif not current["active"]:
        commands.append(StringCommand("swapon", SWAP_PATH))
    if not current["in_fstab"]:
        commands.append(StringCommand(f"echo '{SWAP_PATH} none swap sw 0 0' >> /etc/fstab"))
    if not commands:
        host.noop(f"a swap file of {size} is in use")
    yield from chained(commands)


# Security updates only: Docker's repository and point releases are left to the operator.
_ORIGINS = {
    "Debian": (
        "#clear Unattended-Upgrade::Origins-Pattern;\n"
        "Unattended-Upgrade::Origins-Pattern {\n"
        '        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";\n'
        "};\n"
    ),
    "Ubuntu": (
        "#clear Unattended-Upgrade::Allowed-Origins;\n"
        "#clear Unattended-Upgrade::Origins-Pattern;\n"
        "Unattended-Upgrade::Allowed-Origins {\n"
        '        "${distro_id}:${distro_codename}-security";\n'
        '        "${distro_id}ESMApps:${distro_codename}-apps-security";\n'
        '        "${distro_id}ESM:${distro_codename}-infra-security";\n'
        "};\n"
    ),
}


def distribution() -> str:
    """The distribution of the current host, Debian or Ubuntu; others are refused."""
    name = fact(LinuxDistribution)["name"]
    if name not in _ORIGINS:
        raise OperationError(
            f"this server runs {name or 'an unknown system'}; the deploys support Debian and Ubuntu"
        )
    return str(name)


@operation()
def unattended_upgrades(enabled: bool) -> Commands:
    """Daily security upgrades from the distribution's security archive, or none."""
    flag = "1" if enabled else "0"
    periodic = (
        f'APT::Periodic::Update-Package-Lists "{flag}";\n'
        f'APT::Periodic::Unattended-Upgrade "{flag}";\n'
    )
    wanted = [(AUTO_UPGRADES, periodic, "644")]
    if enabled:
        origins = (
            f"// Written by the fleet engine: security updates only.\n{_ORIGINS[distribution()]}"
        )
        wanted.append((UPGRADE_ORIGINS, origins, "644"))
    commands = write_files(wanted)
    if not commands:
        host.noop("unattended upgrades are configured")
    changes(paths=[path for path, _, _ in wanted])
    yield from chained(commands)


def authorized_keys_file(keys: tuple[str, ...]) -> str:
    """The authorized_keys file for `keys`: each key once, in order."""
    lines = list(dict.fromkeys(" ".join(key.split()) for key in keys if key.strip()))
    head = "# Written by the fleet engine: ssh.authorized_keys of the spec, and its deploy key.\n"
    return head + "".join(f"{line}\n" for line in lines)


@operation()
def authorized_keys(admin: str, keys: tuple[str, ...]) -> Commands:
    """Make the admin user's ~/.ssh/authorized_keys hold exactly `keys`.

    The new file is written beside the old one and moved over it, so a login never finds it
    half written, and the engine's own key is among `keys`: it never locks itself out.
    """
    if not keys:
        raise OperationError("no authorized key given: the engine would lock itself out")
    found = fact(AuthorizedKeys, user=admin)
    home = found["home"]
    if home is None:
        raise OperationError(f"there is no user {admin} on this server")
    content = authorized_keys_file(keys)
    if found["sha256"] == hashlib.sha256(content.encode()).hexdigest():
        host.noop(f"{admin}'s authorized keys are as wanted")
        return
    folder = shlex.quote(f"{home}/.ssh")
    path = shlex.quote(f"{home}/.ssh/authorized_keys")
    staged = shlex.quote(f"{home}/.ssh/authorized_keys.new")
    owner = shlex.quote(f"{admin}:")
    yield StringCommand(
        f"umask 077 && mkdir -p {folder} && chown {owner} {folder} && chmod 700 {folder} && "
        f"printf %s {shlex.quote(content)} > {staged} && chown {owner} {staged} && "
        f"chmod 600 {staged} && mv -f {staged} {path}"
    )


def sshd_config(admin: str) -> str:
    """The sshd drop-in: keys only, no passwords, no root login (unless root is the admin)."""
    root = "prohibit-password" if admin == "root" else "no"
    return (
        "# Written by the fleet engine: keys only, no passwords, no root login.\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitEmptyPasswords no\n"
        f"PermitRootLogin {root}\n"
        "X11Forwarding no\n"
    )


@operation()
def sshd(admin: str) -> Commands:
    """Install the hardened sshd drop-in, checked with `sshd -t` before sshd reloads.

    sshd takes the first value it reads and includes sshd_config.d/*.conf first, so this
    file (10-) wins over cloud images' own drop-ins (50-cloud-init.conf). A configuration
    sshd rejects is rolled back and the run fails: sshd keeps the one it has, and the
    admin keeps its way in.
    """
    config = sshd_config(admin)
    if fact(Sha256File, path=SSHD_DROP_IN) == hashlib.sha256(config.encode()).hexdigest():
        host.noop("sshd is hardened")
        return
    staged = f"{SSHD_DROP_IN}.new"
    live, old = SSHD_DROP_IN, f"{SSHD_DROP_IN}.old"
    check = StringCommand(
        f"rm -f {old}; cp -p {live} {old} 2>/dev/null; mv {staged} {live} && "
        "if ! /usr/sbin/sshd -t; then "
        f"if [ -e {old} ]; then mv {old} {live}; else rm -f {live}; fi; "
        "echo 'sshd rejected the hardened configuration; it keeps its previous one' >&2; exit 1; "
        f"fi; rm -f {old}"
    )
    changes(Service, paths=[SSHD_DROP_IN])
    yield from chained(
        [FileWrite(staged, config, "644"), check, *control_service("ssh", reloaded=True)]
    )


def _sources(control_plane: tuple[str, ...], version: int) -> list[str]:
    networks = [ipaddress.ip_network(source, strict=False) for source in control_plane]
    return [str(net) for net in networks if net.version == version]


def _iptables_rules(
    family: int, ssh_port: int, agent_port: int, control_plane: tuple[str, ...]
) -> str:
    icmp = "icmp" if family == 4 else "ipv6-icmp"
    agent_in = "".join(
        f"-A FLEET-INPUT -p tcp --dport {agent_port} -s {src} -j ACCEPT\n"
        for src in _sources(control_plane, family)
    )
    agent_forward = "".join(
        f"-A FLEET-FORWARD -p tcp -m conntrack --ctstate NEW --ctorigdstport {agent_port}"
        f" -s {src} -j RETURN\n"
        for src in _sources(control_plane, family)
    )
    dhcp6 = "-A FLEET-INPUT -s fe80::/10 -p udp --dport 546 -j ACCEPT\n" if family == 6 else ""
    return (
        "*filter\n"
        ":FLEET-INPUT - [0:0]\n"
        ":FLEET-FORWARD - [0:0]\n"
        '-A FLEET-INPUT -m comment --comment "fleet-firewall:@MARK@"'
        " -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
        "-A FLEET-INPUT -m conntrack --ctstate INVALID -j DROP\n"
        "-A FLEET-INPUT -i lo -j ACCEPT\n"
        f"{agent_in}"
        f"-A FLEET-INPUT -p tcp --dport {agent_port} -j REJECT --reject-with tcp-reset\n"
        f"-A FLEET-INPUT -p {icmp} -j ACCEPT\n"
        f"-A FLEET-INPUT -p tcp --dport {ssh_port} -j ACCEPT\n"
        f"{dhcp6}"
        "-A FLEET-INPUT -i docker0 -j ACCEPT\n"
        "-A FLEET-INPUT -i br-+ -j ACCEPT\n"
        "-A FLEET-INPUT -j DROP\n"
        "-A FLEET-FORWARD -i docker0 -j RETURN\n"
        "-A FLEET-FORWARD -i br-+ -j RETURN\n"
        f"{agent_forward}"
        f"-A FLEET-FORWARD -p tcp -m conntrack --ctstate NEW --ctorigdstport {agent_port}"
        " -j REJECT --reject-with tcp-reset\n"
        "COMMIT\n"
    )


def _nft_rules(ssh_port: int, agent_port: int, control_plane: tuple[str, ...]) -> str:
    v4, v6 = _sources(control_plane, 4), _sources(control_plane, 6)
    new_agent = f"meta l4proto tcp ct state new ct original proto-dst {agent_port}"
    agent_in = ""
    agent_forward = ""
    if v4:
        agent_in += f"    tcp dport {agent_port} ip saddr {{ {', '.join(v4)} }} accept\n"
        agent_forward += f"    {new_agent} ip saddr {{ {', '.join(v4)} }} accept\n"
    if v6:
        agent_in += f"    tcp dport {agent_port} ip6 saddr {{ {', '.join(v6)} }} accept\n"
        agent_forward += f"    {new_agent} ip6 saddr {{ {', '.join(v6)} }} accept\n"
    return (
        "table inet fleet\n"
        "delete table inet fleet\n"
        "table inet fleet {\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy drop;\n"
        '    ct state established,related accept comment "fleet-firewall:@MARK@"\n'
        "    ct state invalid drop\n"
        "    iif lo accept\n"
        f"{agent_in}"
        f"    tcp dport {agent_port} reject with tcp reset\n"
        "    meta l4proto { icmp, ipv6-icmp } accept\n"
        f"    tcp dport {ssh_port} accept\n"
        "    ip6 saddr fe80::/10 udp dport 546 accept\n"
        '    iifname "docker0" accept\n'
        '    iifname "br-*" accept\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        '    iifname "docker0" accept\n'
        '    iifname "br-*" accept\n'
        f"{agent_forward}"
        f"    {new_agent} reject with tcp reset\n"
        "  }\n"
        "}\n"
    )


def firewall_script(
    backend: str, *, ssh_port: int, agent_port: int, control_plane: tuple[str, ...]
) -> tuple[str, tuple[str, ...]]:
    """The firewall script for `backend` (nft or iptables) and the marks it leaves loaded.

    Re-running the script replaces the fleet's rules atomically (one nft transaction, or
    one iptables-restore per family) and touches no other rule: Docker's stay as they are.
    """
    head = (
        "#!/bin/sh\n"
        "# The host firewall of the fleet engine, written by its install and run at boot.\n"
        f"# In: established, loopback, ICMP, SSH (port {ssh_port}), Docker's bridges, and the\n"
        f"# agent (port {agent_port}) from the control plane only; the rest is dropped.\n"
        "set -eu\n"
    )
    if backend == "nft":
        body = f"nft -f - <<'RULES'\n{_nft_rules(ssh_port, agent_port, control_plane)}RULES\n"
        families: tuple[str, ...] = ("inet",)
    else:
        body = ""
        for family, tool in ((4, "iptables"), (6, "ip6tables")):
            rules = _iptables_rules(family, ssh_port, agent_port, control_plane)
            body += (
                f"{tool} -w -N DOCKER-USER 2>/dev/null || true\n"
                f"{tool}-restore -w --noflush <<'RULES'\n{rules}RULES\n"
                f"{tool} -w -C INPUT -j FLEET-INPUT 2>/dev/null"
                f" || {tool} -w -I INPUT 1 -j FLEET-INPUT\n"
                f"{tool} -w -C DOCKER-USER -j FLEET-FORWARD 2>/dev/null"
                f" || {tool} -w -I DOCKER-USER 1 -j FLEET-FORWARD\n"
            )
        families = ("ipv4", "ipv6")
    mark = hashlib.sha256(f"{head}{body}".encode()).hexdigest()[:12]
    return f"{head}{body}".replace("@MARK@", mark), tuple(f"{f}:{mark}" for f in families)


_UNIT = f"""[Unit]
Description=Host firewall of the fleet engine
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target docker.service shutdown.target
After=local-fs.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={FIREWALL_SCRIPT}

[Install]
WantedBy=multi-user.target
"""

_INITD = f"""#!/bin/sh
### BEGIN INIT INFO
# Provides:          fleet-firewall
# Required-Start:    $local_fs
# Required-Stop:
# X-Start-Before:    docker ssh
# Default-Start:     2 3 4 5
# Default-Stop:
# Short-Description: Host firewall of the fleet engine
### END INIT INFO
case "$1" in
  start|restart|reload|force-reload) exec {FIREWALL_SCRIPT} ;;
  stop|status) exit 0 ;;
  *) echo "usage: $0 start|stop|restart|reload|force-reload|status" >&2; exit 3 ;;
esac
"""


@operation()
def firewall(ssh_port: int, agent_port: int, control_plane: tuple[str, ...]) -> Commands:
    """Load the host firewall now and make the server load it at every boot."""
    tools = fact(Installed, commands=FIREWALL_TOOLS)
    if "nft" in tools:
        backend = "nft"
    elif "iptables" in tools:
        backend = "iptables"
    else:
        raise OperationError("neither nft nor iptables is installed: install nftables")
    script, marks = firewall_script(
        backend, ssh_port=ssh_port, agent_port=agent_port, control_plane=control_plane
    )
    if "systemctl" in tools:
        hook_file = (FIREWALL_UNIT, _UNIT, "644")
        enable = [
            StringCommand("systemctl daemon-reload"),
            StringCommand("systemctl enable fleet-firewall.service"),
        ]
    else:
        hook_file = (FIREWALL_INITD, _INITD, "755")
        enable = [StringCommand("update-rc.d fleet-firewall defaults")]
    writes = {
        w.path: w
        for w in write_files([(FIREWALL_SCRIPT, script, "755"), hook_file])
        if isinstance(w, FileWrite)
    }
    # One command: the script and its loading, then the boot hook and its enabling.
    load = [] if set(marks) <= set(fact(FirewallMarks)) else [StringCommand(FIREWALL_SCRIPT)]
    script_steps = [writes[FIREWALL_SCRIPT], *load] if FIREWALL_SCRIPT in writes else load
    hook_steps = [writes[hook_file[0]], *enable] if hook_file[0] in writes else []
    commands = chained([*script_steps, *hook_steps])
    if not commands:
        host.noop(f"the firewall ({backend}) is loaded")
    yield from commands
