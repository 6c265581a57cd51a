"""What a fleet's resources are called at the provider, and the way back.

Provider projects and accounts hold several fleets, and a fleet holds resources of its own
beside those its spec declares. The Pulumi programs (stacks/) name every resource from here,
and the inventory readers (engine/providers/<name>/inventory.py) read the names back through
here:

    a spec resource            fleet_resource_name(fleet, name)          web-prod-private
      one per group or region  qualified_name(fleet, name, qualifier)    api-prod-https.api
                                                                         api-prod-vpc.fra1
    the engine's own           engine_resource_name(fleet, name)         web-prod.engine
                                                                         web-prod.lb-web

Fleet and spec names are DNS labels, which hold no dot, so the dot alone tells a qualifier
or one of the engine's own resources apart from anything a spec can name. `spec_resource`
maps a provider-side name back to the name the diff compares, `fleet_resource_name` of the
spec resource, and gives None for the engine's own (not the spec's business). A name the
fleet did not give is kept as it is, so the diff shows it as a difference.

Both clouds share these names; what only one provider needs lives in its folder
(engine/providers/digitalocean/naming.py: the tag its firewalls select droplets by).
"""

from __future__ import annotations

from engine.model import fleet_resource_name

ENGINE_FIREWALL = "engine"


def qualified_name(fleet: str, name: str, qualifier: str) -> str:
    """A spec resource the provider needs one of per group or region: `api-prod-vpc.fra1`."""
    return f"{fleet_resource_name(fleet, name)}.{qualifier}"


def engine_resource_name(fleet: str, name: str) -> str:
    """A resource the engine adds of its own accord (its firewall, a load balancer's firewall):
    `web-prod.engine`. No spec resource can be called that."""
    return f"{fleet}.{name}"


def lb_firewall_name(fleet: str, lb: str) -> str:
    """The firewall that lets load balancer `lb` reach its targets: `web-prod.lb-web`."""
    return engine_resource_name(fleet, f"lb-{lb}")


def spec_resource(fleet: str, provider_name: str) -> str | None:
    """The name the diff compares for a resource called `provider_name` at the provider.

    >>> spec_resource("api-prod", "api-prod-vpc.fra1")
    'api-prod-vpc'
    >>> spec_resource("api-prod", "api-prod.engine") is None
    True
    >>> spec_resource("api-prod", "office-ssh")
    'office-ssh'
    """
    if provider_name.startswith(f"{fleet}."):
        return None
    if provider_name.startswith(f"{fleet}-"):
        return provider_name.partition(".")[0]
    return provider_name


def spec_resources(fleet: str, provider_names: list[str]) -> tuple[str, ...]:
    """`spec_resource` of each name, the engine's own left out, sorted, each once."""
    mapped = (spec_resource(fleet, name) for name in provider_names)
    return tuple(sorted({name for name in mapped if name is not None}))
