"""Envelope encryption: per-user data keys (DEKs) wrapped by the organization key (ekey)."""
