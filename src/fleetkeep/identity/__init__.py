"""Users, profiles, storage regions and the user lifecycle (active, preserved, deleted)."""
