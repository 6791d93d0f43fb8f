//! The scripted backend: a small model of PostgreSQL's side of the protocol.

use std::collections::HashSet;

use bytes::{BufMut, BytesMut};
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::FrameScan;
use pgpilot_protocol::frontend::{
    bind_statement, describe_target, query_sql, statement_of, FrontendTag, KIND_STATEMENT,
};

/// A scripted backend's state.
#[derive(Debug, Default)]
pub(super) struct Scripted {
    pub(super) on_replica: bool,
    status: Status,
    /// Named prepared statements it has.
    pub(super) statements: HashSet<Vec<u8>>,
    /// After an error in extended protocol: messages are ignored up to Sync.
    skipping: bool,
    /// Rows of a COPY FROM STDIN so far, while one runs.
    copy_in: Option<usize>,
}

/// A transaction status that has a default.
#[derive(Debug, Default, Clone, Copy)]
enum Status {
    #[default]
    Idle,
    Open,
    Failed,
}

impl Scripted {
    pub(super) fn new(on_replica: bool) -> Scripted {
        Scripted {
            on_replica,
            ..Scripted::default()
        }
    }

    /// Answers whole frontend frames as PostgreSQL would.
    pub(super) fn answer(&mut self, input: &[u8], out: &mut BytesMut) {
        for frame in FrameScan::new(input, u32::MAX) {
            let Ok(tag) = FrontendTag::try_from(frame.tag()) else {
                continue;
            };
            let body = frame.body();
            if self.skipping && tag != FrontendTag::Sync {
                continue;
            }
            match tag {
                FrontendTag::Query => self.query(query_sql(body).unwrap_or_default(), out),
                FrontendTag::Parse => match statement_of(body) {
                    Ok((_, sql)) if contains(sql, b"fail") => self.fail("42601", out),
                    Ok((name, _)) if !name.is_empty() && self.statements.contains(name) => {
                        self.fail("42P05", out)
                    }
                    Ok((name, _)) => {
                        if !name.is_empty() {
                            self.statements.insert(name.to_vec());
                        }
                        encode::parse_complete(out);
                    }
                    Err(_) => self.fail("08P01", out),
                },
                FrontendTag::Bind => match bind_statement(body) {
                    Ok(name) if name.is_empty() || self.statements.contains(name) => {
                        put(out, b'2', &[])
                    }
                    _ => self.fail("26000", out),
                },
                FrontendTag::Describe => match describe_target(tag as u8, body) {
                    Ok((KIND_STATEMENT, name))
                        if !name.is_empty() && !self.statements.contains(name) =>
                    {
                        self.fail("26000", out)
                    }
                    Ok((KIND_STATEMENT, _)) => {
                        put(out, b't', &[0, 0]);
                        put(out, b'n', &[]);
                    }
                    _ => put(out, b'n', &[]),
                },
                FrontendTag::Close => {
                    if let Ok((KIND_STATEMENT, name)) = describe_target(tag as u8, body) {
                        self.statements.remove(name);
                    }
                    put(out, b'3', &[]);
                }
                FrontendTag::Execute => {
                    put(out, b'D', &[0, 1, 0, 0, 0, 1, b'1']);
                    encode::command_complete(out, b"SELECT 1");
                }
                FrontendTag::Sync => {
                    self.skipping = false;
                    self.ready(out);
                }
                FrontendTag::FunctionCall => {
                    put(out, b'V', &[0xff, 0xff, 0xff, 0xff]);
                    self.ready(out);
                }
                FrontendTag::CopyData => {
                    if let Some(rows) = self.copy_in.as_mut() {
                        *rows = rows.saturating_add(1);
                    }
                }
                FrontendTag::CopyDone => {
                    if let Some(rows) = self.copy_in.take() {
                        encode::command_complete(out, format!("COPY {rows}").as_bytes());
                        self.ready(out);
                    }
                }
                FrontendTag::CopyFail => {
                    if self.copy_in.take().is_some() {
                        self.fail("57014", out);
                        self.skipping = false;
                        self.ready(out);
                    }
                }
                FrontendTag::Flush | FrontendTag::Terminate | FrontendTag::Password => {}
            }
        }
    }

    fn query(&mut self, sql: &[u8], out: &mut BytesMut) {
        let lower = sql.trim_ascii().to_ascii_lowercase();
        let starts = |w: &[u8]| lower.starts_with(w);
        if lower.is_empty() {
            put(out, b'I', &[]);
        } else if contains(&lower, b"answer_then_terminate") {
            // An answer, then the server's FATAL in the same read (a shutdown right after).
            encode::command_complete(out, b"INSERT 0 1");
            self.ready(out);
            return terminated(out);
        } else if contains(&lower, b"terminate_me") {
            // As pg_terminate_backend would: FATAL, no ReadyForQuery, the connection closes.
            return terminated(out);
        } else if contains(&lower, b"read_only_refusal") {
            self.fail("25006", out);
            self.skipping = false;
        } else if contains(&lower, b"fail") {
            self.fail("42601", out);
            self.skipping = false;
        } else if starts(b"begin") || starts(b"start") {
            self.status = Status::Open;
            encode::command_complete(out, b"BEGIN");
        } else if starts(b"commit") || starts(b"rollback") || starts(b"end") {
            self.status = Status::Idle;
            encode::command_complete(out, b"COMMIT");
        } else if starts(b"copy") && contains(&lower, b"from stdin") {
            self.copy_in = Some(0);
            encode::copy_in_response(out, 0, 1);
            return;
        } else if starts(b"copy") {
            put(out, b'H', &[0, 0, 1, 0, 0]);
            put(out, b'd', b"1\n");
            put(out, b'c', &[]);
            encode::command_complete(out, b"COPY 1");
        } else if starts(b"discard all") || starts(b"deallocate all") {
            self.statements.clear();
            encode::command_complete(out, b"DISCARD ALL");
        } else if starts(b"set") || starts(b"reset") {
            encode::command_complete(out, b"SET");
        } else {
            put(out, b'D', &[0, 1, 0, 0, 0, 1, b'1']);
            encode::command_complete(out, b"SELECT 1");
        }
        self.ready(out);
    }

    /// An ErrorResponse; the transaction, if any, fails, and extended messages skip to Sync.
    fn fail(&mut self, code: &'static str, out: &mut BytesMut) {
        encode::error_response(out, &ErrorFields::error(code, "scripted failure"));
        if matches!(self.status, Status::Open) {
            self.status = Status::Failed;
        }
        self.skipping = true;
    }

    fn ready(&self, out: &mut BytesMut) {
        encode::ready_for_query(
            out,
            match self.status {
                Status::Idle => TransactionStatus::Idle,
                Status::Open => TransactionStatus::InTransaction,
                Status::Failed => TransactionStatus::Failed,
            },
        );
    }
}

/// The FATAL a terminated backend sends before it closes.
fn terminated(out: &mut BytesMut) {
    encode::error_response(
        out,
        &ErrorFields::fatal(
            "57P01",
            "terminating connection due to administrator command",
        ),
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Appends one backend message.
fn put(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(u32::try_from(body.len().saturating_add(4)).unwrap_or(u32::MAX));
    out.put_slice(body);
}
