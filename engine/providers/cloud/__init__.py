"""Hetzner Cloud and DigitalOcean as the engine changes them (reading is engine.providers's).

engine/providers/cloud/backend.py   `engine up` and `destroy`: the fleet's Pulumi program (stacks/)
"""
