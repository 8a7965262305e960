#!/usr/bin/env bash
# Login roles for the statekeeper services of docker-compose.yml, run by the postgres image on its first start
# (/docker-entrypoint-initdb.d). Each login is a member of the statekeeper group roles its service needs, and of
# nothing else (docs/operations.md, "Database roles"):
#   ingest_daemon     statekeeper_ingest, statekeeper_reconciler  `statekeeper run --only ingest` (the accounts'
#                                                                  ingest and their reconciliation passes)
#   projector_daemon  statekeeper_projector                       `statekeeper run --only project`
#   reader            statekeeper_reader                          SQL users: the projections and views
# The group roles are NOLOGIN; migration 0007 creates them too (if missing) and grants their privileges, so this
# script creates only what a login needs to exist first. Idempotent: a role that exists is left as it is.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v ingest_password="${STATEKEEPER_INGEST_PASSWORD:?}" \
    -v projector_password="${STATEKEEPER_PROJECTOR_PASSWORD:?}" \
    -v reader_password="${STATEKEEPER_READER_PASSWORD:?}" <<'SQL'
SELECT format('CREATE ROLE %I NOLOGIN', name)
FROM unnest(ARRAY['statekeeper_ingest', 'statekeeper_reconciler', 'statekeeper_projector', 'statekeeper_reader'])
     AS name
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name)
\gexec
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %s', login, password,
              (SELECT string_agg(quote_ident(m), ', ') FROM unnest(member_of) AS m))
FROM (VALUES ('ingest_daemon', :'ingest_password', ARRAY['statekeeper_ingest', 'statekeeper_reconciler']),
             ('projector_daemon', :'projector_password', ARRAY['statekeeper_projector']),
             ('reader', :'reader_password', ARRAY['statekeeper_reader'])) AS r(login, password, member_of)
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = login)
\gexec
SQL
