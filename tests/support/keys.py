"""Public key lines for tests, made with ssh-keygen; their private halves were thrown away."""

from __future__ import annotations

OPS_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIfkNUg0nb5fVDmJC/X6c1r8CIlP00N0WbC+xthZa/4Z ops@laptop"
)
DEPLOY_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNeJ0mcMR0+Ha0joD1aeTswVNMJA2lDUClWuKqEnvxZ fleet-engine"
)
# 4096-bit RSA (741 bytes): the largest key line a user commonly has.
RSA4096_KEY = (
    "ssh-rsa "
    "AAAAB3NzaC1yc2EAAAADAQABAAACAQDBxWp6uFT7zKAudsFpnz04X6nZrEmc3I26sFnCCAM6PjHOTzc6L3KP"
    "TYrHPyHo0QeuLik1yGenE3uJVpvuv42yOjc5NBlgScjBTVo5redTPwuSW/P5S99Xdlky+KAM6MqEb3gAfiMs"
    "aqBHTPyNtPPCivxxvwOah+tHtD7uR56+tPYmGGC1sgUaDazYAAOHtk+5VHyuix8Qf09YB+jqpAYvc2ygcHeV"
    "wJ5rBiLneG8ghuG5K96OQAZSmBehio+RBEk2j0pf1f0hxzwI6/1B01nXd2xNPqMNzdHIPycKpzowFatOlv4a"
    "LSTm4lckSAOCHISdQYzoM8zIHBQpFJklBND5uTamWY26X78IXqIorHIGPMDus4tUN9cfct27u2D7x/p7WFx9"
    "jEWOcxYGkF3PXezZmw2K4ai+IEM9wXr5kMwA1HlTBmBxeq3vU+brAQgV0mm9fIHr7JHTTNU+hjfbP7NQmsfi"
    "xs8/q4ELW+Oe0Gp9t0e255BLH9gfnDtOmWELG0hu4fvRFfeAi2vMY1JC/Me15qhcQW/88oNDjpEDbLlxUJTQ"
    "/oswe+z7OOGDgGTljFvRGkaQqggct+g15uPNYhMTNCd68i/pBVKgwybI8kyc2Rt+PRfENpe2/PLrinmlvyzW"
    "6d5BWOFf+B7KSXBGGGs+l94W7boNzg1bx4FsrkTYOw=="
    " someone@example"
)
