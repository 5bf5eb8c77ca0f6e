"""Alembic environment of the scheduler (async engine)."""

from services.scheduler.models import Base
from shared.migration_env import run

run(Base.metadata)
