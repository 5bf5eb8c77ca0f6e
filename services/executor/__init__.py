"""Executor: runs dispatched runs in sandboxes and publishes their events."""
