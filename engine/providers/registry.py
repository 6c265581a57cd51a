"""Which module serves each provider, for each thing the engine asks of a provider by name.

    inventory   engine/providers/<name>/inventory.py   open_reader(fleet, token, policy)
    actions     engine/providers/<name>/actions.py     open_actions(fleet, token, policy)
    catalog     engine/providers/<name>/catalog.py     fetch_catalog(token, endpoint, token_env)

Every provider has an inventory; only the clouds have actions and a refreshable catalog. A
module is imported when a fleet of its provider needs it, never before, so `engine validate`
and `engine preview --against-ref` load no SDK. The Backend `engine up` drives is chosen in
engine.up (`backend_for`).

    reader = inventory_reader(fleet, token=read_token(fleet.provider.token_env))
    owned = reader.read_servers()
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.model import Fleet, ProviderName
from engine.providers.retry import RetryPolicy

if TYPE_CHECKING:
    from engine.catalog import Catalog
    from engine.providers.cloud.actions import ProviderActions
    from engine.providers.seam import InventoryReader

READERS: dict[ProviderName, str] = {
    ProviderName.HCLOUD: "engine.providers.hcloud.inventory",
    ProviderName.DIGITALOCEAN: "engine.providers.digitalocean.inventory",
    ProviderName.LOCAL: "engine.providers.local.inventory",
}
ACTIONS: dict[ProviderName, str] = {
    ProviderName.HCLOUD: "engine.providers.hcloud.actions",
    ProviderName.DIGITALOCEAN: "engine.providers.digitalocean.actions",
}
CATALOGS: dict[ProviderName, str] = {
    ProviderName.HCLOUD: "engine.providers.hcloud.catalog",
    ProviderName.DIGITALOCEAN: "engine.providers.digitalocean.catalog",
}

CatalogFetcher = Callable[[str, "str | None", str], "Catalog"]


def require_reader(provider: ProviderName) -> str:
    """The module of `provider`'s reader, or an EngineError saying there is none yet."""
    module_name = READERS.get(provider)
    if module_name is None:
        raise EngineError(
            f"this engine has no inventory reader for the {provider} provider yet, "
            "so it cannot read what exists; compare against a git ref instead "
            "(engine preview SPEC --against-ref REF)"
        )
    return module_name


def inventory_reader(
    fleet: Fleet, *, token: str, policy: RetryPolicy | None = None
) -> InventoryReader:
    """The reader for `fleet`'s provider, using `token` (registered as a secret by the caller).

    `policy` sets retries, timeouts and the sleep/clock used for back-off (tests inject them).
    """
    module = importlib.import_module(require_reader(fleet.provider.name))
    reader: InventoryReader = module.open_reader(fleet, token, policy or RetryPolicy())
    return reader


def provider_actions(
    fleet: Fleet, token: str, policy: RetryPolicy | None = None
) -> ProviderActions:
    """The actions of `fleet`'s provider, with `token` (registered as a secret by the caller)."""
    module_name = ACTIONS.get(fleet.provider.name)
    if module_name is None:
        raise EngineError(
            f"the {fleet.provider.name} provider is no cloud: it has no cloud actions"
        )
    actions: ProviderActions = importlib.import_module(module_name).open_actions(
        fleet, token, policy or RetryPolicy()
    )
    return actions


def catalog_fetcher(provider: str) -> CatalogFetcher:
    """What reads `provider`'s current offer from its API (`fetch_catalog` of its module)."""
    module_name = next((m for p, m in CATALOGS.items() if p.value == provider), None)
    if module_name is None:
        clouds = " and ".join(p.value for p in CATALOGS)
        raise EngineError(
            f"{provider}: only {clouds} catalogs can be refreshed (the local catalog is fixed)"
        )
    fetch: CatalogFetcher = importlib.import_module(module_name).fetch_catalog
    return fetch
