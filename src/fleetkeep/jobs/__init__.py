"""Periodic jobs, run exactly once per interval across any number of processes."""
