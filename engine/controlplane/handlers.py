"""The control plane's job handlers, and the seams to the parts that do the real work.

    install         InstallHandler: a phoned-home server, installed over SSH through the
                    `Installer` seam (engine/install/seam.py, wired by `engine up`)
    poll-inventory  PollInventoryHandler: one page of the fleet's inventory per run, carrying
                    on from the page where it stopped; marks booting servers it sees running
    ssh-check       SshCheckHandler: every 2 s, is a seen server answering SSH? Then it moves
                    on as if it had phoned home, with host keys from ssh-keyscan
    provision       ProvisionHandler: creates one server through the `Provisioner` seam

Every handler is idempotent: it reads the server's record first and does only what is left.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.addresses import ssh_address
from engine.controlplane.jobs import Again, Done, Permanent
from engine.controlplane.lookup import ReaderFactory, provider_reader
from engine.controlplane.phonehome import INSTALL_JOB, install_job
from engine.controlplane.servers import POLL_INVENTORY_JOB, SSH_CHECK_JOB, register_server
from engine.controlplane.ssh import has_ssh_banner, scan_host_keys
from engine.install.seam import Installer, install_target
from engine.model import Labels, Stage
from engine.providers.seam import InventoryReader, Provisioner
from engine.state import FleetSettings, Job, ServerRecord
from engine.state.store import Store

log = logging.getLogger("engine.controlplane.handlers")

PROVISION_JOB = "provision"
SSH_CHECK_INTERVAL_S = 2.0
PAGE_INTERVAL_S = 2.0
PASS_INTERVAL_S = 15.0
_RUNNING = frozenset({"running", "active"})  # hcloud, DigitalOcean


def _settings(store: Store, fleet: str) -> FleetSettings:
    settings = store.fleets.get(fleet)
    if settings is None:
        raise Permanent(f"fleet {fleet} is not registered with this control plane")
    return settings


def _record(store: Store, job: Job) -> ServerRecord:
    record = store.servers.get(job.fleet, job.server or "")
    if record is None:
        raise Permanent(f"fleet {job.fleet} has no server {job.server} any more")
    return record


def _fail(store: Store, job: Job, reason: str) -> None:
    if job.server is None:
        return
    record = store.servers.get(job.fleet, job.server)
    if record is None or record.stage in (Stage.READY, Stage.UNHEALTHY):
        return
    store.servers.update(job.fleet, job.server, stage=Stage.FAILED, reason=reason)
    store.events.record(job.fleet, "server.failed", f"{job.server}: {reason}", server=job.server)


class InstallHandler:
    kind = INSTALL_JOB
    holds_fleet_lock = False

    def __init__(
        self,
        store: Store,
        installer: Installer,
        private_key: Callable[[str], Path | None],
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.store = store
        self.installer = installer
        self.private_key = private_key
        self.clock = clock

    def run(self, job: Job) -> Done | Again:
        record = _record(self.store, job)
        if record.stage in (Stage.READY, Stage.UNHEALTHY) and record.installed_at:
            return Done({"install_hash": record.install_hash or "", "skipped": "installed"})
        if record.stage not in (Stage.PHONED_HOME, Stage.INSTALLING):
            raise Permanent(f"{record.name} is {record.stage}, not ready for its install")
        address = ssh_address(record)
        if not record.host_keys or address is None:
            raise Permanent(f"{record.name} has no pinned host keys or no address to reach")
        settings = _settings(self.store, job.fleet)
        started = self.clock()
        if record.stage is Stage.PHONED_HOME:
            record = self.store.servers.update(job.fleet, record.name, stage=Stage.INSTALLING)
        target = install_target(record, settings, address, self.private_key(job.fleet))
        result = self.installer(target, settings)
        if not result.ok:
            raise RuntimeError(result.error or "the install failed")
        report = self.store.agents.report(job.fleet, record.name)
        heard = report is not None and report.last_heartbeat_at >= started
        self.store.servers.update(
            job.fleet,
            record.name,
            stage=Stage.READY if heard else None,
            install_hash=result.install_hash,
            installed_at=self.clock(),
        )
        self.store.events.record(
            job.fleet,
            "install.succeeded",
            f"{record.name} installed ({len(result.changed)} operation(s) changed)",
            server=record.name,
            data={"install_hash": result.install_hash, "changed": list(result.changed)},
        )
        return Done({"install_hash": result.install_hash, "changed": list(result.changed)})

    def give_up(self, job: Job, error: str) -> None:
        _fail(self.store, job, f"install failed after {job.attempts} attempt(s): {error}")


class PollInventoryHandler:
    kind = POLL_INVENTORY_JOB
    holds_fleet_lock = False

    def __init__(
        self,
        store: Store,
        readers: ReaderFactory = provider_reader,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.store = store
        self.readers = readers
        self.clock = clock
        self._readers: dict[str, InventoryReader | None] = {}

    def _reader(self, settings: FleetSettings) -> InventoryReader | None:
        if settings.name not in self._readers:
            self._readers[settings.name] = self.readers(settings)
        return self._readers[settings.name]

    def run(self, job: Job) -> Done | Again:
        settings = _settings(self.store, job.fleet)
        waiting = {
            r.name: r
            for r in self.store.servers.all(job.fleet)
            if r.stage is Stage.BOOTING and r.inventory_seen_at is None
        }
        if not waiting:
            return Done({"page": job.payload.get("page", 1)})
        reader = self._reader(settings)
        if reader is None:
            return Done({"skipped": "no inventory reader; SSH checks use the registered ids"})
        page = int(job.payload.get("page", 1))
        # A failed read raises: the job is retried with back-off from this same page.
        found = reader.read_page(page)
        for server in found.servers:
            record = waiting.get(server.name)
            if record is None or server.status not in _RUNNING:
                continue
            if record.provider_id and record.provider_id != server.provider_id:
                log.warning(
                    "%s: the inventory lists id %s, not %s",
                    server.name,
                    server.provider_id,
                    record.provider_id,
                )
                continue
            fields: dict[str, Any] = {"inventory_seen_at": self.clock()}
            if not record.provider_id:
                fields["provider_id"] = server.provider_id
            if record.ipv4 is None and server.ipv4:
                fields["ipv4"] = server.ipv4
            if record.ipv6 is None and server.ipv6:
                fields["ipv6"] = server.ipv6
            if not record.private_ips and server.private_ips:
                fields["private_ips"] = server.private_ips
            self.store.servers.update(job.fleet, server.name, **fields)
        if found.next_page is not None:
            return Again(PAGE_INTERVAL_S, {"page": found.next_page})
        return Again(PASS_INTERVAL_S, {"page": 1})

    def give_up(self, job: Job, error: str) -> None:
        self.store.events.record(
            job.fleet, "poll.failed", f"inventory polling stopped: {error}", data={}
        )


class SshCheckHandler:
    kind = SSH_CHECK_JOB
    holds_fleet_lock = False

    def __init__(
        self,
        store: Store,
        readers: ReaderFactory = provider_reader,
        *,
        banner: Callable[[str, int], bool] = has_ssh_banner,
        keyscan: Callable[[str, int], Labels] = scan_host_keys,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.store = store
        self.readers = readers
        self.banner = banner
        self.keyscan = keyscan
        self.clock = clock
        self._has_reader: dict[str, bool] = {}

    def run(self, job: Job) -> Done | Again:
        record = _record(self.store, job)
        if record.stage is not Stage.BOOTING:
            return Done({"skipped": str(record.stage)})
        settings = _settings(self.store, job.fleet)
        deadline = dt.datetime.fromisoformat(str(job.payload["deadline"]))
        if self.clock() > deadline:
            raise Permanent("no phone-home and no SSH answer before the deadline")
        if settings.name not in self._has_reader:
            self._has_reader[settings.name] = self.readers(settings) is not None
        # "Seen": listed running by the provider; without a reader, registered by `engine up`.
        seen = record.inventory_seen_at if self._has_reader[settings.name] else record.provider_id
        address = ssh_address(record)
        if not seen or address is None or not self.banner(address, settings.ssh_port):
            return Again(SSH_CHECK_INTERVAL_S)
        keys = self.keyscan(address, settings.ssh_port)
        if not keys:
            return Again(SSH_CHECK_INTERVAL_S)
        moved = self.store.servers.move_on_by_polling(
            job.fleet, record.name, keys, install_job(job.fleet, record.name)
        )
        return Done({"moved_on": moved, "address": address})

    def give_up(self, job: Job, error: str) -> None:
        _fail(self.store, job, f"not reachable: {error}")


class ProvisionHandler:
    kind = PROVISION_JOB
    holds_fleet_lock = False

    def __init__(self, store: Store, provisioner: Provisioner) -> None:
        self.store = store
        self.provisioner = provisioner

    def run(self, job: Job) -> Done | Again:
        record = _record(self.store, job)
        if record.stage not in (Stage.REQUESTED, Stage.CREATING):
            return Done({"provider_id": record.provider_id, "skipped": str(record.stage)})
        settings = _settings(self.store, job.fleet)
        if record.stage is Stage.REQUESTED:
            record = self.store.servers.update(job.fleet, record.name, stage=Stage.CREATING)
        made = self.provisioner(record, settings)
        register_server(
            self.store,
            settings,
            record.name,
            provider_id=made.provider_id,
            ipv4=made.ipv4,
            ipv6=made.ipv6,
            private_ips=made.private_ips,
        )
        return Done({"provider_id": made.provider_id})

    def give_up(self, job: Job, error: str) -> None:
        _fail(self.store, job, f"creating it failed: {error}")
