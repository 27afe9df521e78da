"""Envelope encryption: per-user data keys (DEKs) wrapped by the organization key (ekey).

Deliberately empty: the agent imports ``keys.subkeys`` and the key connector ``keys.keyfile``
and ``keys.wrapping``; re-exporting the service here would pull the server into both.
"""
