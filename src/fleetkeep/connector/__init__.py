"""The key connector: a customer-run process that holds the organization key (ekey).

It dials out to the server's ``/connector/v1`` WebSocket and answers wrap/unwrap requests, so
the server never holds the ekey. Imports nothing from the server beyond the key file format
and the wrapping primitive.
"""
