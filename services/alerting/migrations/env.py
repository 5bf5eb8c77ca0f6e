"""Alembic environment of alerting (async engine)."""

from services.alerting.models import Base
from shared.migration_env import run

run(Base.metadata)
