"""Alerting: consumes lifecycle events and notifies by rules."""
