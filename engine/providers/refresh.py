"""Read a provider's current offer from its API and write it as a catalog file.

Each cloud reads its offer in engine/providers/<name>/catalog.py, through its client (which
retries and paces requests); engine.providers.registry imports it only when asked, so
validation never loads an SDK.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.catalog import Catalog, load_catalog, refreshed_catalog_path
from engine.providers.registry import catalog_fetcher
from engine.secrets import read_token
from engine.state.files import private_dir


def refresh_catalog(
    provider: str, *, token_env: str, state_dir: Path, endpoint: str | None = None
) -> tuple[Catalog, Path]:
    """Fetch `provider`'s catalog and write it to the state directory. Returns it and its path."""
    fetch = catalog_fetcher(provider)
    catalog = fetch(read_token(token_env), endpoint, token_env)
    path = refreshed_catalog_path(state_dir, provider)
    private_dir(state_dir, path.parent.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(catalog.to_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    load_catalog.cache_clear()
    return catalog, path
