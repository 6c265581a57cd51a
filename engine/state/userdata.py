"""User data: the user_data rendered for each server, kept so that it is rendered once and
never changes (a change would replace the server). engine.cloudinit pins and reads it.

    store.user_data.put("web-prod", "web-1", StoredUserData(content=..., sha256=...))
    store.user_data.get("web-prod", "web-1")      # or None
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select

from engine.state import StoredUserData, schema
from engine.state.database import Database, Repository
from engine.state.servers import Servers


class UserData(Repository):
    """The user_data kept for each server (engine.cloudinit.UserDataStore)."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._user_data = schema.metadata().tables["user_data"]

    def get(self, fleet: str, server: str) -> StoredUserData | None:
        """The user_data kept for a server, or None."""
        table = self._user_data
        with self._read() as connection:
            row = connection.execute(
                select(table.c.content, table.c.sha256).where(
                    table.c.fleet == fleet, table.c.server == server
                )
            ).first()
        return None if row is None else StoredUserData(content=row.content, sha256=row.sha256)

    def put(self, fleet: str, server: str, user_data: StoredUserData) -> None:
        """Keep the user_data rendered for a server (replacing what was there), its hash on
        the server's record as `sha256:<hex>`."""
        table = self._user_data
        with self._write() as connection:
            connection.execute(
                delete(table).where(table.c.fleet == fleet, table.c.server == server)
            )
            connection.execute(
                insert(table).values(
                    fleet=fleet,
                    server=server,
                    content=user_data.content,
                    sha256=user_data.sha256,
                    rendered_at=self._db.now(),
                )
            )
            Servers(self._db, connection).set_user_data_hash(
                fleet, server, f"sha256:{user_data.sha256}"
            )

    def forget_fleet(self, fleet: str) -> None:
        """Drop the user_data of every server of `fleet`."""
        with self._write() as connection:
            connection.execute(delete(self._user_data).where(self._user_data.c.fleet == fleet))
