"""Hetzner Cloud through the official `hcloud` SDK: client, inventory, actions, catalog."""
