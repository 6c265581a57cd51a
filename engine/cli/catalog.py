"""engine catalog show|refresh PROVIDER"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from engine.cli.options import url

PROVIDERS = ("hcloud", "digitalocean", "local")
DEFAULT_TOKEN_ENV = {"hcloud": "HCLOUD_TOKEN", "digitalocean": "DIGITALOCEAN_TOKEN"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # the schema's envName


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "catalog",
        help="show a provider's server types, locations and images, or refresh them",
        description="The catalog is what validation and cost estimates check against. One "
        "ships with the engine; `refresh` reads the provider's API and stores a fresh copy "
        "in the state directory, which is used from then on.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", parents=[common], help="print the catalog in use")
    show.add_argument("provider", choices=PROVIDERS)
    show.add_argument("--format", choices=("text", "json"), default="text")
    show.set_defaults(run=run_show)
    refresh = actions.add_parser("refresh", parents=[common], help="read it from the API")
    refresh.add_argument("provider", choices=("hcloud", "digitalocean"))
    refresh.add_argument(
        "--token-env",
        metavar="NAME",
        help="environment variable holding the API token "
        "(default: HCLOUD_TOKEN or DIGITALOCEAN_TOKEN)",
    )
    refresh.add_argument(
        "--endpoint", type=url, metavar="URL", help="API base URL (default: public API)"
    )
    refresh.set_defaults(run=run_refresh)


def run_show(args: argparse.Namespace) -> int:
    from engine.catalog import load_catalog

    catalog = load_catalog(args.provider, args.state_dir)
    if args.format == "json":
        print(json.dumps(catalog.to_json(), indent=1))
        return 0
    print(f"{catalog.provider} catalog, updated {catalog.updated} ({catalog.source})")
    print(f"locations: {', '.join(catalog.locations)}")
    print(f"images: {', '.join(catalog.images)}")
    print(f"{'server type':<20} {'vCPU':>4} {'memory':>8} {'disk':>6}  monthly  locations")
    for t in catalog.server_types.values():
        price = min(t.prices.values(), default=0.0)
        currency = f" {catalog.currency}" if catalog.currency else ""
        print(
            f"{t.name:<20} {t.cores:>4} {t.memory_gb:>6g}GB {t.disk_gb:>4}GB "
            f"{price:>8.2f}{currency}  {', '.join(t.prices)}"
        )
    return 0


def check_token_env(value: str, example: str) -> None:
    """Refuse a --token-env that is not the NAME of a variable, without showing it: it may be
    the token itself."""
    from engine.errors import EngineError
    from engine.secrets import is_literal_token

    if is_literal_token(value):
        raise EngineError(
            "--token-env: this looks like an API token, not the name of an environment "
            f"variable; export the token in a variable, e.g. export {example}=..., give the "
            f"variable's name (--token-env {example}), and revoke the token if this command "
            "line was ever logged or shared"
        )
    if not ENV_NAME.fullmatch(value):
        raise EngineError(
            "--token-env takes the name of an environment variable: letters, digits and '_', "
            f"not starting with a digit, e.g. --token-env {example}"
        )


def run_refresh(args: argparse.Namespace) -> int:
    from engine.providers.refresh import refresh_catalog

    token_env = args.token_env or DEFAULT_TOKEN_ENV[args.provider]
    check_token_env(token_env, DEFAULT_TOKEN_ENV[args.provider])
    catalog, path = refresh_catalog(
        args.provider, token_env=token_env, state_dir=args.state_dir, endpoint=args.endpoint
    )
    print(
        f"wrote {path}: {len(catalog.server_types)} server types, "
        f"{len(catalog.locations)} locations, {len(catalog.images)} images"
    )
    return 0
