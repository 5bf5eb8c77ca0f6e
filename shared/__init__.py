"""Runbox's small common library: errors, settings, gRPC bootstrap, auth, events, telemetry."""
