//! The session core driven through each of its states against the scripted backend of
//! `script`: no sockets, no runtime.

use bytes::BytesMut;
use pgpilot_protocol::backend::BackendMessage;
use pgpilot_protocol::encode;
use pgpilot_protocol::frame::FrameScan;
use pgpilot_protocol::frontend::KIND_STATEMENT;

use super::script::Script;
use crate::error::Error;

fn transaction() -> Script {
    Script::new(&Script::config("transaction"))
}

fn session_mode() -> Script {
    Script::new(&Script::config("session"))
}

fn query(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode::query(&mut b, sql.as_bytes());
    b.to_vec()
}

/// Parse (of `name`, unless empty: the unnamed statement), Bind, Execute, Sync.
fn extended(name: &str, sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode::parse(&mut b, name.as_bytes(), sql.as_bytes(), &[]);
    encode::bind(&mut b, b"", name.as_bytes(), &[]);
    encode::execute(&mut b, b"", 0);
    encode::sync(&mut b);
    b.to_vec()
}

/// Parse of a named statement and Sync, as PQprepare sends them.
fn prepare(name: &str, sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode::parse(&mut b, name.as_bytes(), sql.as_bytes(), &[]);
    encode::sync(&mut b);
    b.to_vec()
}

/// Bind and Execute of an existing statement, then Sync.
fn run_named(name: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode::bind(&mut b, b"", name.as_bytes(), &[]);
    encode::execute(&mut b, b"", 0);
    encode::sync(&mut b);
    b.to_vec()
}

/// The tags the client received since the last call, with ReadyForQuery's status in place of
/// `Z` (`I`, `T` or `E`), and the SQLSTATEs of the errors.
fn seen(s: &mut Script) -> (String, Vec<String>) {
    let got = s.received.split();
    let mut tags = String::new();
    let mut codes = Vec::new();
    let mut scan = FrameScan::new(&got, u32::MAX);
    for f in &mut scan {
        match BackendMessage::parse(f.bytes).expect("a valid backend message") {
            BackendMessage::ReadyForQuery { status } => tags.push(char::from(status.as_byte())),
            BackendMessage::ErrorResponse(fields) => {
                tags.push('E');
                codes.push(fields.code().to_owned());
            }
            _ => tags.push(char::from(f.tag())),
        }
    }
    assert!(scan.error().is_none(), "the client got whole, valid frames");
    (tags, codes)
}

#[test]
fn reads_go_to_a_replica_writes_to_the_primary_and_backends_go_back_when_idle() {
    let mut s = transaction();
    s.send(&query("select 1")).unwrap();
    assert_eq!(
        seen(&mut s).0,
        "SDCI",
        "ParameterStatus, row, complete, ready"
    );
    assert_eq!(s.backends(), [true], "a replica ran the read");
    assert_eq!(
        (s.attached(), s.pooled()),
        (None, 1),
        "and went back once idle"
    );
    s.send(&query("insert into t values (1)")).unwrap();
    assert_eq!(seen(&mut s).0, "DCI");
    assert_eq!(s.backends(), [true, false], "the primary ran the write");
    s.send(&query("select 2")).unwrap();
    assert_eq!(seen(&mut s).0, "DCI");
    assert_eq!(s.backends().len(), 2, "the pooled replica served again");
}

#[test]
fn a_pipeline_with_an_error_inside_skips_to_its_sync_and_goes_on() {
    let mut s = transaction();
    let mut input = extended("", "select fail");
    input.extend(extended("", "select 1"));
    s.send(&input).unwrap();
    let (tags, codes) = seen(&mut s);
    assert_eq!(tags, "SEI12DCI");
    assert_eq!(codes, ["42601"]);
}

#[test]
fn named_statements_are_prepared_where_they_run_and_closed_for_the_client_alone() {
    let mut s = transaction();
    s.send(&prepare("s1", "select 1")).unwrap();
    assert_eq!(
        seen(&mut s).0,
        "S1I",
        "PQprepare is answered by a backend, which checks the statement"
    );
    assert_eq!(s.backends().len(), 1);
    s.send(&run_named("s1")).unwrap();
    // The backend that checked it has it, and runs it.
    assert_eq!(seen(&mut s), ("2DCI".to_owned(), vec![]));
    s.send(&run_named("s1")).unwrap();
    assert_eq!(
        seen(&mut s),
        ("2DCI".to_owned(), vec![]),
        "prepared once per backend"
    );
    s.send(&query("deallocate s1")).unwrap();
    assert_eq!(
        seen(&mut s).0,
        "CI",
        "DEALLOCATE of a shared statement is answered here"
    );
    s.send(&run_named("s1")).unwrap();
    let (tags, codes) = seen(&mut s);
    assert_eq!((tags.as_str(), codes), ("EI", vec!["26000".to_owned()]));
}

#[test]
fn a_statement_closed_by_the_client_is_gone_for_it() {
    let mut s = transaction();
    s.send(&prepare("s1", "select 1")).unwrap();
    s.send(&run_named("s1")).unwrap();
    let mut close = BytesMut::new();
    encode::close(&mut close, KIND_STATEMENT, b"s1");
    encode::sync(&mut close);
    s.send(&close).unwrap();
    let _ = seen(&mut s);
    s.send(&run_named("s1")).unwrap();
    assert_eq!(
        seen(&mut s).1,
        ["26000"],
        "Bind of a closed statement fails"
    );
}

#[test]
fn copy_in_and_out_pass_through() {
    let mut s = transaction();
    s.send(&query("copy t from stdin")).unwrap();
    assert_eq!(seen(&mut s).0, "SG");
    let mut data = BytesMut::new();
    encode::copy_data(&mut data, b"1\n");
    encode::copy_data(&mut data, b"2\n");
    encode::copy_done(&mut data);
    s.send(&data).unwrap();
    assert_eq!(seen(&mut s).0, "CI");
    assert_eq!(s.attached(), None, "the backend went back after COPY");
    s.send(&query("copy t to stdout")).unwrap();
    assert_eq!(seen(&mut s).0, "HdcCI");
}

#[test]
fn a_held_begin_goes_out_with_the_first_statement_and_an_empty_block_never_leaves() {
    let mut s = transaction();
    s.send(&query("begin")).unwrap();
    assert_eq!(seen(&mut s).0, "CT", "BEGIN answered by the proxy");
    s.send(&query("commit")).unwrap();
    assert_eq!(seen(&mut s).0, "CI");
    assert!(s.backends().is_empty(), "an empty block reached no backend");
    s.send(&query("begin")).unwrap();
    s.send(&query("update t set a = 1")).unwrap();
    // The backend's own BEGIN response is hidden: the client had it already.
    assert_eq!(seen(&mut s).0, "CTSDCT");
    assert_eq!(
        s.backends(),
        [false],
        "a read-write block runs on the primary"
    );
    assert_eq!(s.attached(), Some(false), "held for the whole block");
    s.send(&query("select 1")).unwrap();
    s.send(&query("commit")).unwrap();
    assert_eq!(seen(&mut s).0, "DCTCI");
    assert_eq!((s.attached(), s.pooled()), (None, 1));
}

#[test]
fn state_that_cannot_move_pins_and_the_backend_is_reset_at_the_end() {
    let mut s = transaction();
    s.send(&query("listen jobs")).unwrap();
    let _ = seen(&mut s);
    assert!(s.pinned());
    assert!(
        s.attached().is_some(),
        "a pinned client keeps its backend when idle"
    );
    s.finish();
    assert_eq!((s.resets, s.pooled()), (1, 1), "DISCARD ALL, then pooled");
}

#[test]
fn session_mode_holds_one_primary_and_one_replica() {
    let mut s = session_mode();
    s.send(&query("select 1")).unwrap();
    s.send(&query("insert into t values (1)")).unwrap();
    s.send(&query("select 2")).unwrap();
    s.send(&query("insert into t values (2)")).unwrap();
    assert_eq!(seen(&mut s).0, "SDCIDCIDCIDCI");
    assert_eq!(
        s.backends(),
        [true, false],
        "two backends for the whole session"
    );
    assert_eq!(s.pooled(), 0, "both held");
    s.finish();
    assert_eq!(s.pooled(), 2, "both given back at the end");
}

#[test]
fn a_backend_lost_mid_statement_costs_the_client_an_error_and_the_session_goes_on() {
    let mut s = transaction();
    s.mute = true;
    s.send(&query("insert into t values (1)")).unwrap();
    let _ = seen(&mut s);
    s.lose_backend().unwrap();
    assert_eq!(seen(&mut s), ("EI".to_owned(), vec!["08006".to_owned()]));
    s.mute = false;
    s.send(&query("insert into t values (2)")).unwrap();
    assert_eq!(seen(&mut s).0, "DCI");
    assert_eq!(
        s.backends(),
        [false, false],
        "a new backend served the next statement"
    );
}

#[test]
fn a_read_whose_replica_fails_before_answering_goes_elsewhere_unseen_but_only_once() {
    let mut s = transaction();
    s.mute = true;
    s.send(&query("select 1")).unwrap();
    let _ = seen(&mut s);
    s.mute = false;
    s.lose_backend().unwrap();
    assert_eq!(
        seen(&mut s),
        ("DCI".to_owned(), vec![]),
        "answered, no error"
    );
    assert_eq!(s.backends(), [true, true], "by a second replica connection");

    // The read sent again fails too: the client is told.
    s.mute = true;
    s.send(&query("select 2")).unwrap();
    s.lose_backend().unwrap();
    assert_eq!(
        seen(&mut s).1,
        Vec::<String>::new(),
        "the first loss is hidden"
    );
    s.lose_backend().unwrap();
    assert_eq!(seen(&mut s), ("EI".to_owned(), vec!["08006".to_owned()]));

    // An execution of a prepared read (Bind, Execute, Sync) goes elsewhere too; one that
    // defines a statement on the way (Parse) does not.
    let mut s = transaction();
    s.send(&prepare("s1", "select 5")).unwrap();
    let _ = seen(&mut s);
    s.mute = true;
    let mut run = BytesMut::new();
    encode::bind(&mut run, b"", b"s1", &[]);
    encode::execute(&mut run, b"", 0);
    encode::sync(&mut run);
    s.send(&run).unwrap();
    s.mute = false;
    s.lose_backend().unwrap();
    assert_eq!(
        seen(&mut s),
        ("2DCI".to_owned(), vec![]),
        "answered, no error"
    );
    s.mute = true;
    s.send(&extended("", "select 6")).unwrap();
    s.lose_backend().unwrap();
    assert_eq!(
        seen(&mut s).1,
        ["08006"],
        "a Parse on the way: not sent again"
    );

    // Two reads in flight together: the failure touches both, and neither is sent again.
    let mut s = transaction();
    s.mute = true;
    let mut input = query("select 3");
    input.extend(query("select 4"));
    s.send(&input).unwrap();
    s.lose_backend().unwrap();
    assert_eq!(
        seen(&mut s),
        (
            "SEIEI".to_owned(),
            vec!["08006".to_owned(), "08006".to_owned()]
        ),
        "two reads in flight: each is told it failed"
    );
}

#[test]
fn every_pipelined_write_a_lost_backend_owed_gets_an_error_never_a_bare_ready_for_query() {
    let mut s = transaction();
    s.mute = true;
    let mut input = query("insert into t values (1)");
    input.extend(query("insert into t values (2)"));
    input.extend(query("insert into t values (3)"));
    s.send(&input).unwrap();
    let _ = seen(&mut s);
    s.lose_backend().unwrap();
    let (tags, codes) = seen(&mut s);
    assert_eq!(tags, "EIEIEI", "an error before each ReadyForQuery");
    assert_eq!(codes, ["08006", "08006", "08006"]);
}

#[test]
fn in_session_mode_a_lost_backend_ends_the_session() {
    let mut s = session_mode();
    s.send(&query("insert into t values (1)")).unwrap();
    let _ = seen(&mut s);
    let lost = s.lose_backend();
    assert!(matches!(lost, Err(Error::Backend { .. })), "{lost:?}");
    s.finish();
    assert_eq!(seen(&mut s).1, ["08006"]);
}

#[test]
fn an_answer_of_the_proxy_waits_for_the_backend_to_answer_what_came_before() {
    let mut s = transaction();
    s.mute = true;
    let mut input = query("select 1");
    input.extend(query("/* pgpilot:replica */ insert into t values (1)"));
    s.send(&input).unwrap();
    assert_eq!(
        seen(&mut s).0,
        "S",
        "the refusal waits (only the backend's parameters so far)"
    );
    s.mute = false;
    s.run().unwrap();
    let (tags, codes) = seen(&mut s);
    assert_eq!((tags.as_str(), codes), ("DCIEI", vec!["25006".to_owned()]));
}

#[test]
fn a_refused_extended_unit_is_skipped_up_to_its_sync() {
    let mut s = transaction();
    let mut b = BytesMut::new();
    encode::parse(&mut b, b"", b"/* pgpilot:replica */ delete from t", &[]);
    encode::bind(&mut b, b"", b"", &[]);
    s.send(&b).unwrap();
    assert_eq!(seen(&mut s).1, ["25006"]);
    let mut rest = BytesMut::new();
    encode::execute(&mut rest, b"", 0);
    encode::sync(&mut rest);
    s.send(&rest).unwrap();
    assert_eq!(seen(&mut s).0, "I", "dropped up to Sync, which is answered");
    assert!(s.backends().is_empty());
}

#[test]
fn too_many_named_statements_are_refused() {
    let config = Script::config("transaction") + "\n[routing]\nmax_client_statements = 2\n";
    let mut s = Script::new(&config);
    for name in ["a", "b", "c"] {
        s.send(&prepare(name, "select 1")).unwrap();
    }
    let (tags, codes) = seen(&mut s);
    assert_eq!(
        (tags.as_str(), codes),
        ("S1I1IEI", vec!["53400".to_owned()])
    );
}

#[test]
fn a_parse_that_fails_is_answered_with_its_error_and_leaves_no_statement() {
    let mut s = transaction();
    s.send(&prepare("bad", "select fail")).unwrap();
    let (tags, codes) = seen(&mut s);
    assert_eq!((tags.as_str(), codes), ("SEI", vec!["42601".to_owned()]));
    s.send(&run_named("bad")).unwrap();
    assert_eq!(
        seen(&mut s).1,
        ["26000"],
        "the failed statement does not exist"
    );
    // A Parse the backend skips after an earlier error of the same pipeline is not created
    // either.
    let mut input = BytesMut::new();
    encode::parse(&mut input, b"", b"select fail", &[]);
    encode::parse(&mut input, b"later", b"select 1", &[]);
    encode::sync(&mut input);
    s.send(&input).unwrap();
    assert_eq!(seen(&mut s).1, ["42601"]);
    s.send(&run_named("later")).unwrap();
    assert_eq!(seen(&mut s).1, ["26000"], "a skipped Parse leaves nothing");
}

#[test]
fn malformed_input_is_a_protocol_error_and_terminate_ends_cleanly() {
    for bad in [
        &b"Q\0\0\0\x04"[..],
        b"x\0\0\0\x04",
        b"Q\0\0\0\x02",
        b"p\0\0\0\x05a",
    ] {
        let mut s = transaction();
        let got = s.send(bad);
        assert!(matches!(got, Err(Error::Client(_))), "{bad:?}: {got:?}");
        assert!(s.backends().is_empty(), "{bad:?} reached no backend");
    }
    let mut s = transaction();
    s.send(b"X\0\0\0\x04").unwrap();
    assert!(s.terminated);
}

#[test]
fn input_arriving_a_byte_at_a_time_is_answered_as_a_whole() {
    let mut s = transaction();
    let mut input = extended("", "select 1");
    input.extend(query("select 2"));
    for byte in &input {
        s.send(std::slice::from_ref(byte)).unwrap();
    }
    assert_eq!(seen(&mut s).0, "S12DCIDCI");
}

#[test]
fn a_primary_connection_that_refuses_a_write_as_read_only_is_closed_unless_it_proved_its_role() {
    // No `in_hot_standby` at login (servers before 14): it may be a demoted node.
    let mut s = transaction();
    s.send(&query("insert read_only_refusal")).unwrap();
    assert_eq!(seen(&mut s), ("SEI".into(), vec!["25006".into()]));
    assert_eq!(s.pooled(), 0, "closed, never pooled");
    s.send(&query("insert into t values (1)")).unwrap();
    assert_eq!(seen(&mut s).0, "DCI", "the session goes on");
    assert_eq!(s.backends(), [false, false], "on a new connection");
    assert_eq!(s.pooled(), 1);

    // `in_hot_standby = off`: a primary for life; the 25006 came from a read-only transaction.
    let mut s = transaction();
    s.hot_standby = Some("off");
    s.send(&query("insert read_only_refusal")).unwrap();
    assert_eq!(seen(&mut s).1, ["25006"]);
    assert_eq!(s.pooled(), 1, "kept");
    // A replica's 25006 is what a replica says: nothing to fence.
    let mut s = transaction();
    s.send(&query("select read_only_refusal")).unwrap();
    assert_eq!(seen(&mut s).1, ["25006"]);
    assert_eq!((s.backends(), s.pooled()), (vec![true], 1));
}

#[test]
fn a_fatal_while_serving_the_client_is_passed_on_alone_and_ends_its_connection() {
    for mut s in [transaction(), session_mode()] {
        s.send(&query("insert into t values (1)")).unwrap();
        let _ = seen(&mut s);
        let ended = s.send(&query("insert terminate_me"));
        assert!(matches!(ended, Err(Error::Backend { .. })), "{ended:?}");
        s.finish();
        assert_eq!(
            seen(&mut s),
            ("E".into(), vec!["57P01".into()]),
            "the server's own FATAL, and nothing invented after it"
        );
    }
}

#[test]
fn a_pinned_client_whose_backend_is_lost_is_not_carried_on_as_someone_else() {
    let mut s = transaction();
    s.send(&query("set role app_md5")).unwrap();
    s.send(&query("listen jobs")).unwrap();
    let _ = seen(&mut s);
    assert!(s.pinned());
    let lost = s.lose_backend();
    assert!(matches!(lost, Err(Error::Backend { .. })), "{lost:?}");
    s.finish();
    assert_eq!(seen(&mut s).1, ["08006"]);
}

#[test]
fn a_fatal_right_after_an_answer_loses_no_answer_and_between_transactions_goes_unseen() {
    let mut s = transaction();
    s.send(&query("insert into t values (1)")).unwrap();
    let _ = seen(&mut s);
    s.send(&query("insert answer_then_terminate")).unwrap();
    assert_eq!(
        seen(&mut s),
        ("CI".into(), vec![]),
        "the answer came through, the FATAL of a backend between transactions did not"
    );
    s.send(&query("insert into t values (2)")).unwrap();
    assert_eq!(
        seen(&mut s).0,
        "DCI",
        "the session goes on, on another backend"
    );
}
