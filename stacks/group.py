"""The component every server group's resources hang under, on every provider."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi

COMPONENT_TYPE = "fleet-engine:stacks:ServerGroup"
# Fixed at creation: both providers replace a server when one of these changes. user_data is
# pinned per server (engine.cloudinit.pin_user_data), a snapshot image is looked up anew on
# every run, and keys are managed on the server after boot, not through the provider.
IMMUTABLE_SERVER_INPUTS = ["user_data", "image", "ssh_keys"]


class ServerGroup(pulumi.ComponentResource):
    """One group of a fleet: its servers and the resources only it uses."""

    def __init__(self, fleet: str, group: str, opts: pulumi.ResourceOptions) -> None:
        super().__init__(COMPONENT_TYPE, group, {"fleet": fleet, "group": group}, opts)
        self.register_outputs({})

    def child(
        self, provider: pulumi.ProviderResource, depends_on: Sequence[pulumi.Resource] = ()
    ) -> pulumi.ResourceOptions:
        """Options for a resource of this group."""
        return pulumi.ResourceOptions(parent=self, provider=provider, depends_on=list(depends_on))

    def server(
        self,
        provider: pulumi.ProviderResource,
        depends_on: Sequence[pulumi.Resource] = (),
        *,
        fresh: bool = False,
        adopt: str | None = None,
        delete_before_replace: bool = False,
    ) -> pulumi.ResourceOptions:
        """Options for a server of this group: its immutable inputs are ignored after creation,
        unless it is `fresh` (the plan replaces it with one made from today's inputs, which
        ignoring them would undo); `adopt` imports the existing server with that id."""
        return pulumi.ResourceOptions(
            parent=self,
            provider=provider,
            depends_on=list(depends_on),
            ignore_changes=[] if fresh else IMMUTABLE_SERVER_INPUTS,
            import_=adopt,
            delete_before_replace=delete_before_replace,
        )
