"""Secret parameter values of runs not yet dispatched: kept in this replica's memory only,
never stored, and dropped when the run is handed to an executor or ends."""

from __future__ import annotations

from collections.abc import Mapping


class HeldSecrets:
    """Run id -> the secret values its submit carried, until dispatch."""

    def __init__(self) -> None:
        self._by_run: dict[str, dict[str, str]] = {}

    def keep(self, run_id: str, values: dict[str, str]) -> None:
        self._by_run[run_id] = values

    def drop(self, run_id: str) -> None:
        self._by_run.pop(run_id, None)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._by_run

    def get(self, run_id: str, default: Mapping[str, str]) -> Mapping[str, str]:
        return self._by_run.get(run_id, default)
