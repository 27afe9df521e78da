"""The endpoint agent. It talks to the server only over HTTP and imports none of its code."""
