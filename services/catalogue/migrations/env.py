"""Alembic environment of the catalogue (async engine)."""

from services.catalogue.models import Base
from shared.migration_env import run

run(Base.metadata)
