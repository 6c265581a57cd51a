"""Fleets: the settings of each fleet the control plane serves, registered by `engine up`
(engine.controlplane.fleets takes them from the fleet's spec).

    store.fleets.save(FleetSettings(name="web-prod", provider="hcloud", ...))
    store.fleets.get("web-prod")                  # or None
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from engine.state import FleetSettings, schema
from engine.state.database import Database, Repository, row_fields


class Fleets(Repository):
    """The fleets' control-plane settings."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._fleets = schema.metadata().tables["fleets"]

    def save(self, settings: FleetSettings) -> None:
        """Insert or replace a fleet's control-plane settings."""
        values = {
            "name": settings.name,
            "provider": settings.provider,
            "provider_endpoint": settings.provider_endpoint,
            "token_env": settings.token_env,
            "readiness": settings.readiness,
            "token_ttl_s": settings.token_ttl_s,
            "phone_home_timeout_s": settings.phone_home_timeout_s,
            "verify_source_ip": settings.verify_source_ip,
            "heartbeat_s": settings.heartbeat_s,
            "ssh_user": settings.ssh_user,
            "ssh_port": settings.ssh_port,
            "install": dict(settings.install),
            "control_plane_url": settings.control_plane_url,
            "control_plane_sources": list(settings.control_plane_sources),
            "updated_at": self._db.now(),
        }
        with self._write() as connection:
            done = connection.execute(
                update(self._fleets).where(self._fleets.c.name == settings.name).values(values)
            )
            if done.rowcount == 0:
                connection.execute(insert(self._fleets).values(values))

    def get(self, name: str) -> FleetSettings | None:
        """A fleet's settings, or None when no `engine up` registered it."""
        with self._read() as connection:
            row = connection.execute(
                select(self._fleets).where(self._fleets.c.name == name)
            ).first()
        return None if row is None else _fleet(row)

    def all(self) -> tuple[FleetSettings, ...]:
        """Every registered fleet, by name."""
        with self._read() as connection:
            rows = connection.execute(select(self._fleets).order_by(self._fleets.c.name)).all()
        return tuple(_fleet(row) for row in rows)

    def forget(self, name: str) -> None:
        """Drop a fleet's settings."""
        with self._write() as connection:
            connection.execute(delete(self._fleets).where(self._fleets.c.name == name))


def _fleet(row: Row[Any]) -> FleetSettings:
    values = row_fields(row, FleetSettings)
    values["control_plane_sources"] = tuple(values["control_plane_sources"] or ())
    return FleetSettings(**values)
