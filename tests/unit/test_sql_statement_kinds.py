"""What a statement can do, from PostgreSQL's parse tree (runner.statement_kinds; issue 10, items 5
and 6): every transaction-control statement found, nothing else; the batching rule."""

from __future__ import annotations

import pytest

from runner.migration import Statement


@pytest.mark.parametrize("sql, words", [
    ("BEGIN", "BEGIN"), ("begin transaction isolation level serializable", "BEGIN"),
    ("START TRANSACTION", "START TRANSACTION"), ("COMMIT", "COMMIT"), ("END", "END"),
    ("COMMIT AND CHAIN", "COMMIT"), ("ROLLBACK", "ROLLBACK"), ("ABORT", "ABORT"), ("SAVEPOINT s", "SAVEPOINT"),
    ("RELEASE SAVEPOINT s", "RELEASE"), ("ROLLBACK TO SAVEPOINT s", "ROLLBACK TO SAVEPOINT"),
    ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"), ("COMMIT PREPARED 'x'", "COMMIT PREPARED"),
    ("ROLLBACK PREPARED 'x'", "ROLLBACK PREPARED"), ("/* c */ -- c\n  COMMIT", "COMMIT"),
])
def test_every_transaction_statement_is_found(sql: str, words: str) -> None:
    from runner.statement_kinds import transaction_control

    found = transaction_control(Statement(sql=sql + ";", line=7))
    assert found is not None and found[1] == words
    assert found[0] == 7 + sql.count("\n")


@pytest.mark.parametrize("sql", [
    "DO $$ BEGIN COMMIT; END $$;", "PREPARE plan AS SELECT 1;", "SELECT 'COMMIT';", "CREATE TABLE commit_log (id int);",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;", "-- COMMIT\nSELECT 1;",
])
def test_statements_that_only_mention_the_words_are_not(sql: str) -> None:
    from runner.statement_kinds import transaction_control

    assert transaction_control(Statement(sql=sql, line=1)) is None


@pytest.mark.parametrize("sql, batchable", [
    ("CREATE TABLE t (id int PRIMARY KEY, n int DEFAULT nextval('s'), c text CHECK (c <> 'x'))", True),
    ("CREATE TABLE t AS SELECT nextval('s')", False),
    ("CREATE MATERIALIZED VIEW m AS SELECT f()", False),
    ("SELECT nextval('s') INTO t", False),
    ("CREATE TABLE t (id int, e int GENERATED ALWAYS AS (id + f()) STORED)", False),
    ("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (f()) TO (10)", False),
    ("CREATE TABLE c (LIKE p INCLUDING ALL)", False),
    ("CREATE INDEX ON t ((lower(name)))", False),
    ("CREATE INDEX ON t (id) WHERE f(id)", False),
    ("CREATE INDEX CONCURRENTLY ON t (id)", False),
    ("ALTER TABLE t ADD COLUMN z int DEFAULT f()", False),
    ("ALTER TABLE t ADD COLUMN z int DEFAULT 0 NOT NULL", True),
    ("ALTER TABLE t ADD COLUMN z my_domain", False),
    ("ALTER TABLE t ALTER COLUMN z SET DEFAULT f()", True),
    ("ALTER TABLE t ALTER COLUMN z TYPE bigint USING f(z)", False),
    ("ALTER TABLE t ADD CONSTRAINT c CHECK (f(z))", False),
    ("ALTER TABLE t ADD CONSTRAINT c CHECK (f(z)) NOT VALID", True),
    ("CREATE VIEW v AS SELECT f()", True),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT nextval('s')::int $$", True),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$", False),
    ("CREATE EXTENSION dblink", False),
    ("CREATE EVENT TRIGGER e ON ddl_command_end EXECUTE FUNCTION f()", False),
    ("DO $$ BEGIN PERFORM nextval('s'); END $$", False),
    ("CALL p()", False),
    ("COPY t FROM PROGRAM 'true'", False),
    ("NOTIFY ch", False),
    ("SELECT pg_notify('ch', 'x')", False),
    ("INSERT INTO t VALUES (1)", False),
    ("ALTER SEQUENCE s RESTART", False),
    ("SET search_path = app", False),
    ("CREATE SCHEMA app CREATE TABLE x (id int) CREATE VIEW y AS SELECT 1", True),
    ("CREATE SCHEMA app CREATE TABLE x AS SELECT 1", False),
    ("GRANT SELECT ON t TO PUBLIC", True),
    ("COMMENT ON TABLE t IS 'x'", True),
    ("DROP TABLE t CASCADE", True),
    ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)", False),  # pglast cannot parse it
    # A cast to a type that is not built in, where the value is evaluated: a domain's CHECK runs
    # (review of the batches: it could change the session or the bookkeeping of the batch).
    ("ALTER TABLE t ADD COLUMN c text DEFAULT 'x'::d", False),
    ("ALTER TABLE t ADD COLUMN c text DEFAULT ('x'::d)::text", False),
    ("ALTER TABLE t ADD COLUMN c text DEFAULT ('(x)'::comp)::text", False),  # its columns' domains
    ("ALTER TABLE t ADD COLUMN c citext", False),  # an extension's type: a domain may have its name
    ("ALTER TABLE t ADD COLUMN c text DEFAULT 'x'::pg_catalog.text", True),
    ("ALTER TABLE t ADD COLUMN c varchar(3) DEFAULT 'x'::varchar(3) NOT NULL", True),
    ("CREATE TABLE t (id int, e int GENERATED ALWAYS AS (1::d) STORED)", False),
    ("CREATE INDEX ON t USING gist (r)", False),  # a range type's subtype_diff may be a user's function
    ("CREATE INDEX ON t USING btree (id)", True),
])
def test_effect_free_rule(sql: str, batchable: bool) -> None:
    from runner.statement_kinds import effect_free

    assert effect_free(sql) is batchable


@pytest.mark.parametrize("sql", [
    "SET search_path = app", "SET LOCAL lock_timeout = 0", "RESET ALL", "RESET search_path", "SET ROLE app",
    "SET SESSION AUTHORIZATION app", "SET TIME ZONE 'UTC'", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "PREPARE p AS SELECT 1", "DECLARE c CURSOR FOR SELECT 1", "LISTEN ch", "UNLISTEN *", "DISCARD ALL",
    "LOAD 'auto_explain'", "SELECT set_config('search_path', 'app', false)",
    "CREATE TABLE t AS SELECT set_config('role', 'app', false)",
    "ALTER TABLE t ADD COLUMN z text DEFAULT set_config('a.b', 'c', false)",
])
def test_no_statement_changing_the_session_is_effect_free(sql: str) -> None:
    """What a batch relies on between its migrations (PostgreSQL.batch_reset): of session state, a
    statement called effect free can leave only temporary objects behind."""
    from runner.statement_kinds import effect_free

    assert effect_free(sql) is False


@pytest.mark.parametrize("sql", [
    "CREATE TRIGGER a AFTER INSERT ON public._migrate_log FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE TRIGGER a AFTER INSERT ON elsewhere._migrate_history FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE POLICY p ON _yoyo_log USING (f())", "ALTER TABLE _migrate_log FORCE ROW LEVEL SECURITY",
    "ALTER TABLE _migrate_log ADD COLUMN x int", "CREATE SCHEMA s CREATE TABLE t (id int) CREATE VIEW v AS SELECT 1",
])
def test_a_statement_naming_a_protected_table_is_not_effect_free(sql: str) -> None:
    from runner.statement_kinds import effect_free

    protected = frozenset({"_migrate_log", "_migrate_history", "_yoyo_log"})
    assert effect_free(sql, protected) is ("CREATE SCHEMA" in sql)
    assert effect_free(sql) is True


@pytest.mark.parametrize("search_path, first", [
    (None, True), ("", True), ('"$user", public', True), ("pg_catalog, app", True), ("app, pg_catalog", False),
    ('app, "pg_catalog"', False), (" public ,  pg_catalog ", False), ('"a,pg_catalog", b', True),
])
def test_builtin_types_resolve_first_unless_pg_catalog_comes_later(search_path, first) -> None:
    from runner.statement_kinds import builtins_first

    assert builtins_first(search_path) is first
