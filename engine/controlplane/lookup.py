"""Provider inventory reads for the control plane: cached, rate-limited, one fleet at a time.

A phone-home for a server whose provider id the store does not hold yet (the phone-home beat
`engine up`'s registration) is checked against the provider's own list. Reading it costs API
requests (Hetzner allows 3600 an hour), so a fleet's inventory is read at most once every
`min_interval_s`, whatever the number of requests asking, and concurrent askers wait for the
one read in flight instead of starting their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.model import Fleet, Provider, ProviderName
from engine.providers import ActualServer
from engine.providers.registry import READERS, inventory_reader
from engine.providers.seam import InventoryReader
from engine.secrets import token_from_env
from engine.state import FleetSettings

ReaderFactory = Callable[[FleetSettings], "InventoryReader | None"]


class InventoryUnavailable(EngineError):
    """The fleet's inventory cannot be read now (no reader, no token, or the API failed)."""


def provider_reader(settings: FleetSettings) -> InventoryReader | None:
    """The inventory reader for a registered fleet, with the token from the variable its
    spec names; None for a provider without a reader or when the variable is not set.
    Raises InventoryUnavailable if the variable holds no usable token."""
    try:
        provider = ProviderName(settings.provider)
    except ValueError:
        return None
    if provider not in READERS or not settings.token_env:
        return None
    try:
        token = token_from_env(settings.token_env)
    except EngineError as error:
        raise InventoryUnavailable(str(error)) from None
    if not token:
        return None
    fleet = Fleet(
        name=settings.name,
        provider=Provider(
            name=provider, token_env=settings.token_env, endpoint=settings.provider_endpoint
        ),
        groups=(),
    )
    return inventory_reader(fleet, token=token)


@dataclass(slots=True)
class _Snapshot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    servers: dict[str, ActualServer] = field(default_factory=dict)
    read_at: float | None = None
    reader: InventoryReader | None = None


class InventoryLookup:
    """Finds one server of a fleet in the provider's inventory, reading it sparingly."""

    def __init__(
        self,
        readers: ReaderFactory = provider_reader,
        *,
        min_interval_s: float = 5.0,
        max_age_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._readers = readers
        self._min_interval_s = min_interval_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._snapshots: dict[str, _Snapshot] = {}
        self._guard = threading.Lock()
        self.reads = 0

    def find(self, settings: FleetSettings, server: str) -> ActualServer | None:
        """The server as the provider lists it (owned, by its fleet-server label), or None
        if the provider does not list it. Raises InventoryUnavailable if it cannot tell."""
        with self._guard:
            snapshot = self._snapshots.setdefault(settings.name, _Snapshot())
        with snapshot.lock:
            now = self._clock()
            age = now - snapshot.read_at if snapshot.read_at is not None else None
            found = snapshot.servers.get(server)
            # A listed server is believed for max_age_s (a replaced server gets a new id); an
            # unlisted one is asked about again only after min_interval_s.
            if age is not None and (
                age < self._min_interval_s or (found is not None and age < self._max_age_s)
            ):
                return found
            if snapshot.reader is None:
                snapshot.reader = self._readers(settings)
                if snapshot.reader is None:
                    raise InventoryUnavailable(
                        f"no inventory reader for fleet {settings.name} "
                        f"(provider {settings.provider}, token variable {settings.token_env})"
                    )
            snapshot.read_at = now
            self.reads += 1
            try:
                servers = snapshot.reader.read_servers()
            except EngineError as error:
                raise InventoryUnavailable(str(error)) from None
            snapshot.servers = {s.name: s for s in servers}
            return snapshot.servers.get(server)
