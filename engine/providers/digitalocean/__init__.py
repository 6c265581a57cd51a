"""DigitalOcean through the official `pydo` SDK: client, inventory, actions, catalog, tags."""
