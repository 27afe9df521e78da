"""The server's side of backups: users' repositories in their storage region, backup
sessions over the device API, the snapshot catalogue, quotas, retention and checks.

Deliberately import-free: the CLI imports only the module it needs.
"""
