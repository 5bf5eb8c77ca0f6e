"""Scheduler: runs (history and queue), schedules, dispatch, run state."""
