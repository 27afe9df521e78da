"""Who changed what, when: an append-only record of every state-changing call."""
