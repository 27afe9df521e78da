"""Alerts: one open alert per (type, subject), updated while its condition lasts."""
