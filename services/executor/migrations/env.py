"""Alembic environment of the executor (async engine)."""

from services.executor.models import Base
from shared.migration_env import run

run(Base.metadata)
