# Sourced by the postgres image's entrypoint once, when it creates the database (an empty data volume).
# One login role per service (SERVICE_ROLES), with CONNECT and CREATE on the database and nothing else:
# each service creates its own schemas at start, so it owns them, and has no right on another's (nobody
# else is granted any on them). `ops` (OPS_ROLE: the CLI of the ops container) is a member of every service
# role. Passwords: PG_PASSWORD_<ROLE>, from deploy/.env. The public schema is closed to all but its owner.
ops_role="${OPS_ROLE:-ops}"
psql_here() {
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" "$@"
}
psql_here --set=db="$POSTGRES_DB" <<'SQL'
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
for role in $SERVICE_ROLES $ops_role; do
  var="PG_PASSWORD_${role^^}"
  psql_here --set=role="$role" --set=password="${!var}" --set=db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE :"db" TO :"role";
SQL
done
for role in $SERVICE_ROLES; do
  psql_here --set=role="$role" --set=db="$POSTGRES_DB" --set=ops="$ops_role" <<'SQL'
GRANT CREATE ON DATABASE :"db" TO :"role";
GRANT :"role" TO :"ops";
SQL
done
