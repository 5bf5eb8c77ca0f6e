#!/usr/bin/env bash
# CI: make sure the PostgreSQL and MariaDB servers the dialect tests use are up.
# The CI machine runs both from Debian's packages; start whichever is not answering.
# (A developer machine without them skips those tests locally; CI fails instead.)
set -euo pipefail

if command -v pg_isready >/dev/null; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432
fi

if command -v mariadb-admin >/dev/null; then
  if ! mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
    echo "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  fi
  for _ in $(seq 1 30); do mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 1; done
  mariadb-admin -h 127.0.0.1 -u root ping
fi
