#!/bin/sh
# Runs once, when the PostgreSQL volume is first created: MLflow's backend store lives next to
# papertrain's database, in its own database owned by the same user.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${MLFLOW_DB:-mlflow}\" OWNER \"$POSTGRES_USER\""
