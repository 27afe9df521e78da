"""fleetkeep: self-hosted endpoint data protection."""

__version__ = "0.1.0"
