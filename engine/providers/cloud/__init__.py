"""What Hetzner Cloud and DigitalOcean share: not a provider, the part of both that is the same.

    backend.py         the Backend of `engine up`, `destroy` and `engine server`: the fleet's
                       Pulumi program (stacks/) for changes, each cloud's actions for signals
    pulumi_runner.py   the Pulumi Automation API: the only module here that imports Pulumi
    actions.py         a provider action as the engine sees it, and waiting until it ends

Each cloud's own SDK code is in engine/providers/hcloud/ and engine/providers/digitalocean/.
"""
