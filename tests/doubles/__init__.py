"""Faithful stand-ins for clouds the tests cannot reach (Microsoft Graph, Google Admin SDK).

Each is a small real HTTPS server on a loopback port that follows the documented wire format,
so production code talks real HTTP (and TLS) to it without any patching.
"""
