"""Administrators, their roles, API tokens and console sessions."""
