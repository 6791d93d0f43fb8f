//! A corpus of statements as ORMs and people write them, each with the route it must get.
//! Anything not proven read-only must go to the primary.

use super::Reason::*;
use super::Target::*;
use super::*;

const CORPUS: &[(&str, Target, Reason)] = &[
    // ActiveRecord (Rails)
    (
        r#"SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT "posts".* FROM "posts" WHERE "posts"."user_id" = $1 ORDER BY "posts"."created_at" DESC"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT COUNT(*) FROM "comments" WHERE "comments"."post_id" = $1"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT 1 AS one FROM "users" WHERE "users"."email" = $1 LIMIT $2"#,
        Replica,
        PlainRead,
    ),
    (
        r#"INSERT INTO "users" ("email", "created_at", "updated_at") VALUES ($1, $2, $3) RETURNING "id""#,
        Primary,
        Write,
    ),
    (
        r#"UPDATE "users" SET "name" = $1, "updated_at" = $2 WHERE "users"."id" = $3"#,
        Primary,
        Write,
    ),
    (
        r#"DELETE FROM "sessions" WHERE "sessions"."id" = $1"#,
        Primary,
        Write,
    ),
    (
        r#"SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2 FOR UPDATE"#,
        Primary,
        LockingClause,
    ),
    (
        r#"SELECT "schema_migrations"."version" FROM "schema_migrations" ORDER BY "schema_migrations"."version" ASC"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT pg_try_advisory_lock(1616513117)"#,
        Primary,
        WriteFunction,
    ),
    (
        r#"SELECT pg_advisory_unlock(1616513117)"#,
        Primary,
        WriteFunction,
    ),
    (
        r#"SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = '"users"'::regclass AND a.attnum > 0"#,
        Replica,
        PlainRead,
    ),
    (r#"SHOW max_identifier_length"#, Replica, Show),
    (r#"SET client_min_messages TO 'warning'"#, Primary, Write),
    (r#"SET standard_conforming_strings = on"#, Primary, Write),
    (r#"BEGIN"#, Primary, Write),
    (r#"COMMIT"#, Replica, TransactionEnd),
    (r#"ROLLBACK"#, Replica, TransactionEnd),
    (r#"SAVEPOINT active_record_1"#, Primary, Write),
    (r#"RELEASE SAVEPOINT active_record_1"#, Primary, Write),
    (
        r#"ROLLBACK TO SAVEPOINT active_record_1"#,
        Replica,
        TransactionEnd,
    ),
    // Django
    (
        r#"SELECT "auth_user"."id", "auth_user"."password", "auth_user"."last_login" FROM "auth_user" WHERE "auth_user"."username" = %s LIMIT 21"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT "django_session"."session_key", "django_session"."session_data" FROM "django_session" WHERE ("django_session"."expire_date" > '2026-11-26T04:00:00+00:00'::timestamptz AND "django_session"."session_key" = 'abc')"#,
        Replica,
        PlainRead,
    ),
    (
        r#"UPDATE "auth_user" SET "last_login" = '2026-11-26T04:00:00+00:00'::timestamptz WHERE "auth_user"."id" = 1"#,
        Primary,
        Write,
    ),
    (
        r#"INSERT INTO "django_admin_log" ("action_time", "user_id", "content_type_id", "object_id", "object_repr", "action_flag", "change_message") VALUES ('2026-11-26', 1, 2, '3', 'x', 1, '[]') RETURNING "django_admin_log"."id""#,
        Primary,
        Write,
    ),
    (
        r#"SELECT (1) AS "a" FROM "blog_entry" WHERE "blog_entry"."id" = 3 LIMIT 1"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT "blog_entry"."id" FROM "blog_entry" WHERE "blog_entry"."id" = 3 LIMIT 1 FOR UPDATE"#,
        Primary,
        LockingClause,
    ),
    (
        r#"SELECT "blog_entry"."id" FROM "blog_entry" FOR NO KEY UPDATE SKIP LOCKED"#,
        Primary,
        LockingClause,
    ),
    (
        r#"SELECT "blog_entry"."id" FROM "blog_entry" FOR SHARE NOWAIT"#,
        Primary,
        LockingClause,
    ),
    (
        r#"SELECT COUNT(*) AS "__count" FROM "blog_entry" WHERE "blog_entry"."pub_date" <= '2026-11-26'"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT c.relname, c.relkind FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v') AND n.nspname NOT IN ('pg_catalog', 'pg_toast') AND pg_catalog.pg_table_is_visible(c.oid)"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT nextval(pg_get_serial_sequence('"blog_entry"','id'))"#,
        Primary,
        WriteFunction,
    ),
    (
        r#"SELECT setval(pg_get_serial_sequence('"blog_entry"','id'), coalesce(max("id"), 1), max("id") IS NOT null) FROM "blog_entry""#,
        Primary,
        WriteFunction,
    ),
    // Hibernate
    (
        r#"select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=?"#,
        Replica,
        PlainRead,
    ),
    (r#"select nextval('users_seq')"#, Primary, WriteFunction),
    (
        r#"insert into users (email,name,id) values (?,?,?)"#,
        Primary,
        Write,
    ),
    (
        r#"update users set email=?,name=? where id=?"#,
        Primary,
        Write,
    ),
    (r#"delete from users where id=?"#, Primary, Write),
    (
        r#"select o1_0.id,o1_0.total from orders o1_0 where o1_0.user_id=? for update"#,
        Primary,
        LockingClause,
    ),
    (
        r#"select o1_0.id from orders o1_0 where o1_0.id=? for no key update of o1_0"#,
        Primary,
        LockingClause,
    ),
    (
        r#"select count(o1_0.id) from orders o1_0 where o1_0.status in (?,?,?)"#,
        Replica,
        PlainRead,
    ),
    (r#"select current_timestamp"#, Replica, PlainRead),
    // SQLAlchemy
    (
        r#"SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.id = %(pk_1)s"#,
        Replica,
        PlainRead,
    ),
    (
        r#"INSERT INTO users (name, fullname) VALUES (%(name)s, %(fullname)s) RETURNING users.id"#,
        Primary,
        Write,
    ),
    (
        r#"SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace WHERE pg_catalog.pg_class.relname = %(table_name)s"#,
        Replica,
        PlainRead,
    ),
    (r#"select pg_catalog.version()"#, Replica, PlainRead),
    (r#"select current_schema()"#, Replica, PlainRead),
    (r#"show standard_conforming_strings"#, Replica, Show),
    (
        r#"WITH anon_1 AS (SELECT users.id AS id FROM users WHERE users.active) SELECT count(*) FROM anon_1"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT users.id FROM users WHERE users.id IN (__[POSTCOMPILE_id_1])"#,
        Replica,
        PlainRead,
    ),
    // Prisma
    (
        r#"SELECT "public"."User"."id", "public"."User"."email" FROM "public"."User" WHERE ("public"."User"."email" = $1 AND 1=1) LIMIT $2 OFFSET $3"#,
        Replica,
        PlainRead,
    ),
    (
        r#"INSERT INTO "public"."User" ("email","name") VALUES ($1,$2) RETURNING "public"."User"."id""#,
        Primary,
        Write,
    ),
    (
        r#"UPDATE "public"."Post" SET "published" = $1 WHERE ("public"."Post"."id" = $2 AND 1=1) RETURNING "public"."Post"."id""#,
        Primary,
        Write,
    ),
    (
        r#"SELECT "public"."Post"."id", COUNT("public"."Post"."authorId") FROM "public"."Post" GROUP BY "public"."Post"."id""#,
        Replica,
        PlainRead,
    ),
    (r#"SELECT 1"#, Replica, PlainRead),
    // Sequelize
    (
        r#"SELECT "id", "firstName", "lastName", "createdAt", "updatedAt" FROM "Users" AS "User" WHERE "User"."id" = 1;"#,
        Replica,
        PlainRead,
    ),
    (
        r#"INSERT INTO "Users" ("id","firstName","createdAt","updatedAt") VALUES (DEFAULT,$1,$2,$3) RETURNING "id","firstName","createdAt","updatedAt";"#,
        Primary,
        Write,
    ),
    (
        r#"SELECT count(*) AS "count" FROM "Users" AS "User";"#,
        Replica,
        PlainRead,
    ),
    (r#"START TRANSACTION;"#, Primary, Write),
    (
        r#"SELECT "id" FROM "Users" AS "User" WHERE "User"."id" = 1 FOR UPDATE;"#,
        Primary,
        LockingClause,
    ),
    // psql / people
    ("\n\n  select   *   from   t   ", Replica, PlainRead),
    (
        r#"SELECT * FROM t WHERE note = 'INSERT INTO x VALUES (1)'"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT * FROM t WHERE note = E'it\'s DELETE time'"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT $body$ UPDATE t SET a = 1 $body$ AS txt"#,
        Replica,
        PlainRead,
    ),
    (r#"SELECT "update", "delete" FROM t"#, Replica, PlainRead),
    (
        r#"SELECT * FROM t -- FOR UPDATE
"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT * FROM t /* FOR UPDATE */ WHERE a = 1"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT * FROM t /* outer /* nested FOR UPDATE */ still comment */ WHERE a = 1"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT * FROM t FOR KEY SHARE OF t SKIP LOCKED"#,
        Primary,
        LockingClause,
    ),
    (
        r#"SELECT * FROM (SELECT * FROM t FOR UPDATE) s"#,
        Primary,
        LockingClause,
    ),
    (r#"SELECT * INTO backup_t FROM t"#, Primary, SelectInto),
    (r#"SELECT * INTO TEMP scratch FROM t"#, Primary, SelectInto),
    (
        r#"WITH moved AS (DELETE FROM queue WHERE id = 1 RETURNING *) INSERT INTO done SELECT * FROM moved"#,
        Primary,
        WriteCte,
    ),
    (
        r#"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT sum(n) FROM r"#,
        Replica,
        PlainRead,
    ),
    (
        r#"WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING 1) SELECT * FROM a, b"#,
        Primary,
        WriteCte,
    ),
    (
        r#"WITH a AS MATERIALIZED (SELECT * FROM t) SELECT * FROM a"#,
        Replica,
        PlainRead,
    ),
    (
        r#"WITH a AS (INSERT INTO log VALUES (1) RETURNING id) SELECT id FROM a"#,
        Primary,
        WriteCte,
    ),
    (r#"VALUES (1, 'one'), (2, 'two')"#, Replica, PlainRead),
    (r#"TABLE pgbench_branches"#, Replica, PlainRead),
    (
        r#"(SELECT 1) UNION ALL (SELECT 2) ORDER BY 1"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT 1 UNION SELECT nextval('s')"#,
        Primary,
        WriteFunction,
    ),
    (
        r#"SELECT * FROM t WHERE id = (SELECT currval('t_id_seq'))"#,
        Primary,
        WriteFunction,
    ),
    (r#"SELECT lastval()"#, Primary, WriteFunction),
    (
        r#"SELECT set_config('search_path', 'x', false)"#,
        Primary,
        WriteFunction,
    ),
    (r#"SELECT txid_current()"#, Primary, WriteFunction),
    (r#"SELECT pg_current_xact_id()"#, Primary, WriteFunction),
    (
        r#"SELECT pg_notify('chan', 'payload')"#,
        Primary,
        WriteFunction,
    ),
    (r#"SELECT pg_advisory_xact_lock(1)"#, Primary, WriteFunction),
    (
        r#"SELECT pg_try_advisory_lock_shared(1)"#,
        Primary,
        WriteFunction,
    ),
    (r#"SELECT lo_create(0)"#, Primary, WriteFunction),
    (r#"SELECT lo_unlink(1234)"#, Primary, WriteFunction),
    (r#"SELECT lo_import('/tmp/x')"#, Primary, WriteFunction),
    (
        r#"SELECT dblink_exec('dbname=x', 'DELETE FROM t')"#,
        Primary,
        WriteFunction,
    ),
    (r#"SELECT pg_switch_wal()"#, Primary, WriteFunction),
    (r#"SELECT public.nextval('s')"#, Primary, WriteFunction),
    (r#"SELECT "NEXTVAL"('s')"#, Primary, WriteFunction),
    (
        r#"SELECT now(), random(), clock_timestamp(), gen_random_uuid()"#,
        Replica,
        PlainRead,
    ),
    (
        r#"SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()"#,
        Replica,
        PlainRead,
    ),
    (r#"SHOW ALL"#, Replica, Show),
    (r#"SHOW transaction_isolation"#, Replica, Show),
    (r#"EXPLAIN SELECT * FROM t"#, Replica, Explain),
    (r#"EXPLAIN (COSTS OFF) SELECT * FROM t"#, Replica, Explain),
    (r#"EXPLAIN ANALYZE SELECT * FROM t"#, Replica, Explain),
    (
        r#"EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t"#,
        Replica,
        Explain,
    ),
    (
        r#"EXPLAIN ANALYZE INSERT INTO t VALUES (1)"#,
        Primary,
        Write,
    ),
    (r#"EXPLAIN ANALYZE VERBOSE DELETE FROM t"#, Primary, Write),
    (
        r#"EXPLAIN (ANALYZE true) UPDATE t SET a = 1"#,
        Primary,
        Write,
    ),
    (
        r#"EXPLAIN ANALYZE SELECT nextval('s')"#,
        Primary,
        WriteFunction,
    ),
    (r#"EXPLAIN INSERT INTO t VALUES (1)"#, Replica, Explain),
    // Transactions
    (r#"BEGIN READ ONLY"#, Replica, ReadOnlyTransaction),
    (
        r#"BEGIN TRANSACTION READ ONLY"#,
        Replica,
        ReadOnlyTransaction,
    ),
    (
        r#"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"#,
        Replica,
        ReadOnlyTransaction,
    ),
    (
        r#"START TRANSACTION READ ONLY, ISOLATION LEVEL READ COMMITTED"#,
        Replica,
        ReadOnlyTransaction,
    ),
    (r#"BEGIN ISOLATION LEVEL SERIALIZABLE"#, Primary, Write),
    (
        r#"BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"#,
        Primary,
        Write,
    ),
    (r#"BEGIN READ WRITE"#, Primary, Write),
    (r#"BEGIN ISOLATION LEVEL REPEATABLE READ"#, Primary, Write),
    (r#"START TRANSACTION"#, Primary, Write),
    (r#"END"#, Replica, TransactionEnd),
    (r#"ABORT"#, Replica, TransactionEnd),
    (r#"COMMIT AND CHAIN"#, Replica, TransactionEnd),
    (r#"PREPARE TRANSACTION 'tx1'"#, Primary, Write),
    (r#"COMMIT PREPARED 'tx1'"#, Primary, Write),
    (r#"ROLLBACK PREPARED 'tx1'"#, Primary, Write),
    (
        r#"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"#,
        Primary,
        Write,
    ),
    // Writes of every kind
    (
        r#"CREATE TABLE t (id bigserial primary key)"#,
        Primary,
        Write,
    ),
    (
        r#"CREATE INDEX CONCURRENTLY t_idx ON t (a)"#,
        Primary,
        Write,
    ),
    (r#"ALTER TABLE t ADD COLUMN b int"#, Primary, Write),
    (r#"DROP TABLE IF EXISTS t"#, Primary, Write),
    (r#"TRUNCATE t"#, Primary, Write),
    (r#"LOCK TABLE t IN ACCESS EXCLUSIVE MODE"#, Primary, Write),
    (r#"LISTEN chan"#, Primary, Write),
    (r#"UNLISTEN *"#, Primary, Write),
    (r#"NOTIFY chan, 'x'"#, Primary, Write),
    (r#"CALL do_things(1)"#, Primary, Write),
    (r#"DO $$ BEGIN PERFORM 1; END $$"#, Primary, Write),
    (r#"VACUUM ANALYZE t"#, Primary, Write),
    (r#"ANALYZE t"#, Primary, Write),
    (
        r#"REFRESH MATERIALIZED VIEW CONCURRENTLY mv"#,
        Primary,
        Write,
    ),
    (r#"CLUSTER t USING t_pkey"#, Primary, Write),
    (r#"REINDEX TABLE t"#, Primary, Write),
    (r#"GRANT SELECT ON t TO reader"#, Primary, Write),
    (r#"COMMENT ON TABLE t IS 'x'"#, Primary, Write),
    (
        r#"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a"#,
        Primary,
        Write,
    ),
    (r#"INSERT INTO t SELECT * FROM s"#, Primary, Write),
    (
        r#"INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = EXCLUDED.a"#,
        Primary,
        Write,
    ),
    (
        r#"UPDATE t SET a = a + 1 WHERE id IN (SELECT id FROM s)"#,
        Primary,
        Write,
    ),
    (r#"DELETE FROM t USING s WHERE t.id = s.id"#, Primary, Write),
    (r#"COPY t FROM STDIN WITH (FORMAT csv)"#, Primary, Write),
    (r#"COPY t TO STDOUT"#, Replica, CopyOut),
    (r#"DECLARE c CURSOR FOR SELECT * FROM t"#, Primary, Write),
    (
        r#"PREPARE q (int) AS SELECT * FROM t WHERE id = $1"#,
        Primary,
        Write,
    ),
    (r#"EXECUTE q(1)"#, Primary, Write),
    (r#"DEALLOCATE q"#, Primary, Write),
    (r#"DISCARD ALL"#, Primary, Write),
    (r#"RESET ALL"#, Primary, Write),
    (r#"CHECKPOINT"#, Primary, Write),
    (r#"SECURITY LABEL ON TABLE t IS 'x'"#, Primary, Write),
    (
        r#"IMPORT FOREIGN SCHEMA s FROM SERVER f INTO l"#,
        Primary,
        Write,
    ),
    // Multi-statement Queries: all reads, or the primary
    (r#"SELECT 1; SELECT 2; SHOW work_mem"#, Replica, PlainRead),
    (r#"SELECT 1; INSERT INTO t VALUES (1)"#, Primary, Write),
    (r#"BEGIN; SELECT 1; COMMIT"#, Primary, Write),
    (
        r#"BEGIN READ ONLY; SELECT 1; COMMIT"#,
        Replica,
        ReadOnlyTransaction,
    ),
    (r#"SELECT 1;;; SELECT 2;"#, Replica, PlainRead),
    (r#"SET search_path TO x; SELECT 1"#, Primary, Write),
    // Text the classifier cannot follow is never a read
    (r#"SELECT 'never closed"#, Primary, Unparsed),
    (r#"SELECT "never closed"#, Primary, Unparsed),
    (r#"SELECT $q$ never closed"#, Primary, Unparsed),
    (r#"SELECT /* never closed"#, Primary, Unparsed),
    (r#""#, Primary, Empty),
    (r#"   ;  ; "#, Primary, Empty),
    (r#"-- nothing but a comment"#, Primary, Empty),
    // Hints
    (r#"/* pgpilot:primary */ SELECT * FROM t"#, Primary, Hint),
    (r#"/* pgpilot:replica */ SELECT * FROM t"#, Replica, Hint),
    (r#"/*pgpilot:replica*/ DELETE FROM t"#, Primary, HintRefused),
    (
        r#"/* pgpilot:replica */ SELECT * FROM t FOR UPDATE"#,
        Primary,
        HintRefused,
    ),
    (r#"/* app:checkout */ SELECT * FROM t"#, Replica, PlainRead),
];

#[test]
fn every_corpus_statement_gets_its_route() {
    let mut wrong = Vec::new();
    for (sql, target, reason) in CORPUS {
        let got = classify(sql.as_bytes());
        if got
            != (Route {
                target: *target,
                reason: *reason,
            })
        {
            wrong.push(format!(
                "{sql:?}: got {:?}/{:?}, want {target:?}/{reason:?}",
                got.target, got.reason
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} misrouted:\n{}",
        wrong.len(),
        CORPUS.len(),
        wrong.join("\n")
    );
}

#[test]
fn no_write_in_the_corpus_becomes_a_read_when_disguised() {
    for (sql, target, reason) in CORPUS {
        // Empty text is no write, and a hint only counts where it opens the text.
        if *target == Replica || matches!(reason, Empty | Hint) {
            continue;
        }
        for disguised in [
            format!("/* SELECT */ {sql}"),
            format!("-- SELECT\n{sql}"),
            format!("\n\t {}", sql.to_lowercase()),
            sql.to_uppercase(),
            format!("SELECT 1; {sql}"),
        ] {
            assert_eq!(
                classify(disguised.as_bytes()).target,
                Primary,
                "{disguised}"
            );
        }
    }
}
