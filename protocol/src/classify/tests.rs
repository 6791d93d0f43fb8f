use super::*;

fn check(sql: &str, target: Target, reason: Reason) {
    assert_eq!(classify(sql.as_bytes()), Route { target, reason }, "{sql}");
}

use Reason::*;
use Target::*;

#[test]
fn plain_reads_go_to_replicas() {
    for sql in [
        "SELECT 1",
        "select * from t where a = 1",
        "  SeLeCt abalance FROM pgbench_accounts WHERE aid = $1",
        "VALUES (1), (2)",
        "TABLE t",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "(SELECT 1) UNION (SELECT 2)",
        "SELECT 'update t set a = 1' AS s",
        "SELECT $$ insert into t $$",
        "SELECT $tag$ delete $x$ $tag$",
        "SELECT /* for update */ 1",
        "SELECT /* nested /* for update */ still */ 1",
        "SELECT 1 -- for update\n",
        "SELECT E'it\\'s for update'",
        "SELECT \"update\" FROM t",
        "SELECT 1; SELECT 2",
        "SELECT pg_is_in_recovery()",
        "SELECT count(*) FROM t",
    ] {
        check(sql, Replica, PlainRead);
    }
    check("SHOW search_path", Replica, Show);
    check("EXPLAIN SELECT 1", Replica, Explain);
    check("EXPLAIN UPDATE t SET a = 1", Replica, Explain);
    check("EXPLAIN ANALYZE SELECT 1", Replica, Explain);
    check("COMMIT", Replica, TransactionEnd);
}

#[test]
fn writes_and_locks_go_to_the_primary() {
    check("SELECT * FROM t FOR UPDATE", Primary, LockingClause);
    check("SELECT * FROM t FOR NO KEY UPDATE", Primary, LockingClause);
    check("select * from t for share", Primary, LockingClause);
    check("SELECT * FROM t FOR KEY SHARE", Primary, LockingClause);
    check("SELECT * INTO t2 FROM t", Primary, SelectInto);
    check(
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        Primary,
        WriteCte,
    );
    check(
        "WITH a AS (WITH b AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT 1) SELECT 1",
        Primary,
        WriteCte,
    );
    check(
        "WITH u AS (UPDATE t SET a = 1 RETURNING 1) SELECT 1",
        Primary,
        WriteCte,
    );
    check("SELECT nextval('s')", Primary, WriteFunction);
    check("SELECT public.nextval('s')", Primary, WriteFunction);
    check("SELECT \"nextval\"('s')", Primary, WriteFunction);
    check("SELECT pg_advisory_lock(1)", Primary, WriteFunction);
    check(
        "SELECT PG_TRY_ADVISORY_XACT_LOCK(1)",
        Primary,
        WriteFunction,
    );
    check(
        "SELECT set_config('a.b', '1', false)",
        Primary,
        WriteFunction,
    );
    check("UPDATE t SET a = 1", Primary, Write);
    check("insert into t values (1)", Primary, Write);
    check("CREATE TABLE t (a int)", Primary, Write);
    check("SELECT 1; UPDATE t SET a = 1", Primary, Write);
    check("EXPLAIN ANALYZE UPDATE t SET a = 1", Primary, Write);
    check("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t", Primary, Write);
    check("SET search_path TO x", Primary, Write);
    check("LOCK t", Primary, Write);
    check("COMMIT PREPARED 'x'", Primary, Write);
    check("", Primary, Empty);
    check(" -- only a comment", Primary, Empty);
    check("SELECT 'unterminated", Primary, Unparsed);
    check("SELECT /* unterminated", Primary, Unparsed);
    check("SELECT $a$ unterminated", Primary, Unparsed);
}

#[test]
fn transactions() {
    check("BEGIN", Primary, Write);
    check("BEGIN READ ONLY", Replica, ReadOnlyTransaction);
    check("START TRANSACTION READ ONLY", Replica, ReadOnlyTransaction);
    check(
        "begin transaction isolation level repeatable read read only",
        Replica,
        ReadOnlyTransaction,
    );
    check(
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        Primary,
        Write,
    );
    check("BEGIN READ WRITE", Primary, Write);
    check("BEGIN READ ONLY; SELECT 1", Replica, ReadOnlyTransaction);
}

#[test]
fn wrapping_a_write_never_makes_it_a_read() {
    let writes = [
        "UPDATE t SET a = 1",
        "SELECT nextval('s')",
        "SELECT * FROM t FOR UPDATE",
        "DELETE FROM t",
    ];
    for w in writes {
        for wrapped in [
            format!("/* SELECT */ {w}"),
            format!("-- SELECT\n{w}"),
            format!("  \n\t{}", w.to_lowercase()),
            format!("SELECT 1; {w}"),
            format!("{w}; SELECT 1"),
            format!("/* a /* b */ c */{w}"),
        ] {
            assert_eq!(classify(wrapped.as_bytes()).target, Primary, "{wrapped}");
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let alphabet = b"sSeElLcCtT '\"$-/*;()\\\nEx1_.";
    for len in 0..64 {
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = classify(&bytes);
        }
    }
}

#[test]
fn session_effects() {
    use SessionEffect as E;
    for (sql, effect) in [
        ("SELECT 1", E::None),
        ("SET search_path TO x", E::Settings),
        ("set statement_timeout = 5", E::Settings),
        ("SET SESSION search_path TO x", E::Settings),
        ("SET LOCAL search_path TO x", E::None),
        ("SET TRANSACTION READ ONLY", E::None),
        ("SET CONSTRAINTS ALL DEFERRED", E::None),
        ("RESET ALL", E::Settings),
        ("DISCARD ALL", E::Discard),
        ("DEALLOCATE ALL", E::Discard),
        ("SELECT 1; SET work_mem = '1MB'", E::Settings),
        ("SET a.b = 1; DISCARD PLANS", E::Discard),
        ("SELECT 'SET x = 1'", E::None),
        ("/* SET */ SELECT 1", E::None),
    ] {
        assert_eq!(session_effect(sql.as_bytes()), effect, "{sql}");
    }
}

#[test]
fn configured_functions_override_the_builtin_list() {
    let f = Functions::new(["audit_log", "Touch_Row"], ["nextval"]);
    assert_eq!(
        classify_with(b"SELECT audit_log('x')", &f),
        Route {
            target: Primary,
            reason: WriteFunction
        }
    );
    assert_eq!(
        classify_with(b"SELECT app.touch_row(1)", &f),
        Route {
            target: Primary,
            reason: WriteFunction
        }
    );
    assert_eq!(
        classify_with(b"SELECT nextval('s')", &f),
        Route {
            target: Replica,
            reason: PlainRead
        }
    );
    assert_eq!(
        classify_with(b"SELECT setval('s', 1)", &f),
        Route {
            target: Primary,
            reason: WriteFunction
        }
    );
    assert_eq!(classify(b"SELECT audit_log('x')").target, Replica);
}

#[test]
fn hints_decide_but_a_replica_hint_never_sends_a_write_to_a_replica() {
    let f = Functions::default();
    assert_eq!(
        classify_with(b"/* pgpilot:primary */ SELECT 1", &f),
        Route {
            target: Primary,
            reason: Hint
        }
    );
    assert_eq!(
        classify_with(b"  /*pgpilot:replica*/ SELECT 1", &f),
        Route {
            target: Replica,
            reason: Hint
        }
    );
    assert_eq!(
        classify_with(b"/* pgpilot:replica */ UPDATE t SET a = 1", &f),
        Route {
            target: Primary,
            reason: HintRefused
        }
    );
    assert_eq!(
        classify_with(b"/* pgpilot:replica */ SELECT nextval('s')", &f),
        Route {
            target: Primary,
            reason: HintRefused
        }
    );
    // Only a comment that opens the text is a hint.
    assert_eq!(
        classify_with(b"SELECT 1 /* pgpilot:primary */", &f).reason,
        PlainRead
    );
    assert_eq!(classify_with(b"/* other */ SELECT 1", &f).reason, PlainRead);
    assert_eq!(hint(b"/* pgpilot:replica"), None);
}

#[test]
fn constructs_that_pin_a_client_to_its_backend() {
    use SessionEffect as E;
    for sql in [
        "LISTEN jobs",
        "CREATE TEMP TABLE t (a int)",
        "create temporary table t as select 1",
        "CREATE GLOBAL TEMPORARY TABLE t (a int)",
        "SELECT * INTO TEMP t FROM s",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "PREPARE q AS SELECT 1",
        "SELECT pg_advisory_lock(42)",
        "SELECT pg_try_advisory_lock(1, 2)",
        "SET ROLE reporting",
        "SET SESSION AUTHORIZATION other",
        "SELECT 1; LISTEN x",
    ] {
        assert_eq!(session_effect(sql.as_bytes()), E::Pin, "{sql}");
    }
    for sql in [
        "SELECT pg_advisory_xact_lock(1)",
        "DECLARE c CURSOR FOR SELECT 1",
        "CREATE TABLE t (a int)",
        "SELECT 'LISTEN x'",
    ] {
        assert_eq!(session_effect(sql.as_bytes()), E::None, "{sql}");
    }
    assert_eq!(session_effect(b"LISTEN x; DISCARD ALL"), E::Pin);
}

#[test]
fn copy_out_is_a_read_and_every_other_copy_a_write() {
    check("COPY pgbench_accounts TO STDOUT", Replica, CopyOut);
    check(
        "copy public.t (a, b) to stdout with (format csv)",
        Replica,
        CopyOut,
    );
    check(
        "COPY (SELECT * FROM t WHERE a > 1) TO STDOUT",
        Replica,
        CopyOut,
    );
    check("COPY (SELECT nextval('s')) TO STDOUT", Primary, Write);
    check(
        "COPY (SELECT * FROM t FOR UPDATE) TO STDOUT",
        Primary,
        Write,
    );
    check(
        "COPY (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) TO STDOUT",
        Primary,
        Write,
    );
    check("COPY t FROM STDIN", Primary, Write);
    check("COPY t TO '/tmp/x.csv'", Primary, Write);
    check("COPY t TO PROGRAM 'gzip > /tmp/x'", Primary, Write);
    check("COPY (SELECT 1", Primary, Write);
    check("FETCH 10 FROM c", Replica, Cursor);
    check("MOVE NEXT IN c", Replica, Cursor);
    check("CLOSE c", Replica, Cursor);
}

#[test]
fn lone_default_begins() {
    for sql in [
        "BEGIN",
        "begin;",
        "BEGIN WORK",
        "begin transaction",
        "START TRANSACTION;",
    ] {
        assert!(lone_default_begin(sql.as_bytes()), "{sql}");
    }
    for sql in [
        "BEGIN READ ONLY",
        "BEGIN; SELECT 1",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SELECT 1",
        "BEGIN READ WRITE",
    ] {
        assert!(!lone_default_begin(sql.as_bytes()), "{sql}");
    }
}

#[test]
fn transaction_ends_and_read_only_settings() {
    assert_eq!(lone_transaction_end(b"COMMIT"), Some(true));
    assert_eq!(lone_transaction_end(b"end transaction;"), Some(true));
    assert_eq!(lone_transaction_end(b"ROLLBACK WORK"), Some(false));
    assert_eq!(lone_transaction_end(b"ABORT"), Some(false));
    assert_eq!(lone_transaction_end(b"ROLLBACK TO SAVEPOINT a"), None);
    assert_eq!(lone_transaction_end(b"COMMIT PREPARED 'x'"), None);
    assert_eq!(lone_transaction_end(b"COMMIT; SELECT 1"), None);
    assert!(set_transaction_read_only(b"SET TRANSACTION READ ONLY"));
    assert!(set_transaction_read_only(
        b"set transaction isolation level repeatable read, read only;"
    ));
    assert!(!set_transaction_read_only(
        b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY"
    ));
    assert!(!set_transaction_read_only(b"SET TRANSACTION READ WRITE"));
    assert!(!set_transaction_read_only(
        b"SET TRANSACTION READ ONLY; SELECT 1"
    ));
}

#[test]
fn deep_nesting_is_unparsed_not_a_stack_overflow() {
    // A million levels would overflow any worker's stack if each one recursed.
    let explain = format!("{}SELECT 1", "EXPLAIN ANALYZE ".repeat(1_000_000));
    let route = classify(explain.as_bytes());
    assert_eq!(route.target, Target::Primary);
    assert_eq!(route.reason, Reason::Unparsed);
    let copy = format!(
        "{}SELECT 1{}",
        "COPY (".repeat(100_000),
        ") TO STDOUT".repeat(100_000)
    );
    assert_eq!(classify(copy.as_bytes()).target, Target::Primary);
    // Nesting within the bound is still classified.
    let shallow = format!("{}SELECT 1", "EXPLAIN ANALYZE ".repeat(10));
    assert_eq!(classify(shallow.as_bytes()).reason, Reason::Explain);
}

#[test]
fn every_reason_has_its_place_and_a_name_of_its_own() {
    let mut names = std::collections::HashSet::new();
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "{r:?}");
        assert!(names.insert(r.as_str()), "{} twice", r.as_str());
    }
}
