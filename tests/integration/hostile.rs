//! Hostile clients: every case sends the same bytes to PostgreSQL itself and to pgpilot, and
//! checks that pgpilot answers as PostgreSQL does (or, where it differs on purpose, as the
//! case says), that it is still up, and that another client is served right after.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pgpilot_protocol::backend::BackendMessage;
use pgpilot_protocol::encode;
use pgpilot_protocol::frame::split_frame;

use crate::common::{self, Opts};
use crate::raw::Raw;

/// One step of a probe.
#[derive(Clone)]
enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Read exactly one byte (the answer to SSLRequest / GSSENCRequest).
    Byte,
    /// Read messages until ReadyForQuery, a close, or a quiet moment.
    Frames,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// A lone byte (`N`, `S`, `G`).
    Byte(u8),
    /// A message other than an ErrorResponse, by tag.
    Msg(char),
    /// An ErrorResponse: severity and SQLSTATE.
    Error(String, String),
    /// Bytes that are no v3 message: a protocol-2 error (`E` and a C string), say.
    Raw(String),
}

/// Everything a probe saw: the replies in order and whether the server closed the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    replies: Vec<Reply>,
    closed: bool,
}

impl Outcome {
    /// The first ErrorResponse, as `(severity, SQLSTATE)`.
    fn error(&self) -> Option<(&str, &str)> {
        self.replies.iter().find_map(|r| match r {
            Reply::Error(s, c) => Some((s.as_str(), c.as_str())),
            _ => None,
        })
    }
}

/// How long a probe waits for more once the peer is quiet.
const QUIET: Duration = Duration::from_millis(700);

fn probe(addr: SocketAddr, steps: &[Step]) -> Outcome {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    converse(s, steps)
}

/// Takes `steps` on a connection and says what came back.
fn converse(mut s: TcpStream, steps: &[Step]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    let mut closed = false;
    for step in steps {
        match step {
            Step::Send(bytes) => {
                if s.write_all(bytes).is_err() {
                    closed = true;
                    break;
                }
            }
            Step::Byte => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut b = [0u8; 1];
                match s.read(&mut b) {
                    Ok(1) => replies.push(Reply::Byte(b[0])),
                    _ => {
                        closed = true;
                        break;
                    }
                }
            }
            Step::Frames => {
                s.set_read_timeout(Some(QUIET)).unwrap();
                loop {
                    if split_frame(&mut buf.clone(), 1 << 30).is_err() {
                        // Not v3: keep the text, the rest of the conversation is off.
                        let mut rest = Vec::new();
                        let _ = s.read_to_end(&mut rest);
                        buf.extend_from_slice(&rest);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        replies.push(Reply::Raw(text));
                        closed = true;
                        break;
                    }
                    while let Some(f) = split_frame(&mut buf, 1 << 30).expect("valid frames") {
                        match BackendMessage::parse(&f.bytes) {
                            Ok(BackendMessage::ErrorResponse(e)) => replies.push(Reply::Error(
                                String::from_utf8_lossy(e.get(b'S').unwrap_or_default())
                                    .into_owned(),
                                e.code().to_owned(),
                            )),
                            _ => replies.push(Reply::Msg(f.tag as char)),
                        }
                    }
                    if replies.last() == Some(&Reply::Msg('Z')) {
                        break;
                    }
                    let mut chunk = [0u8; 8192];
                    match s.read(&mut chunk) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            break
                        }
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    break;
                }
            }
        }
    }
    if !closed {
        // Did the peer close after its last word? A short read tells.
        s.set_read_timeout(Some(QUIET)).unwrap();
        let mut chunk = [0u8; 64];
        closed = matches!(s.read(&mut chunk), Ok(0) | Err(_))
            && !matches!(s.read(&mut chunk), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    }
    Outcome { replies, closed }
}

/// Whether the connection is closed: a read returns EOF (or an error) rather than timing out.
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(QUIET)).unwrap();
    let mut chunk = [0u8; 64];
    match s.read(&mut chunk) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::startup_message(&mut out, params);
    out.to_vec()
}

/// A startup packet with an explicit protocol version.
fn startup_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(major);
    body.put_u16(minor);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out.to_vec()
}

fn untagged(code: u32, extra: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32(8 + extra.len() as u32);
    out.put_u32(code);
    out.put_slice(extra);
    out.to_vec()
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::sasl_initial_response(&mut out, mechanism, data);
    out.to_vec()
}

const APP: &[(&str, &str)] = &[("user", "app"), ("database", "app")];

/// A logged-in raw connection's stream, for cases that start after login.
fn logged_in(addr: SocketAddr) -> TcpStream {
    Raw::connect(addr, "app", "app", &[]).expect("login").stream
}

/// After login: send `bytes`, then collect what comes back.
fn after_login(addr: SocketAddr, bytes: &[u8]) -> Outcome {
    converse(logged_in(addr), &[Step::Send(bytes.to_vec()), Step::Frames])
}

/// Another client is served right after.
fn still_serves(addr: SocketAddr, what: &str) {
    let mut raw = Raw::connect(addr, "app", "app", &[])
        .unwrap_or_else(|e| panic!("{what}: the next client cannot log in: {e:?}"));
    assert_eq!(
        raw.query("SELECT 41 + 1").unwrap(),
        ["42"],
        "{what}: the next client is served"
    );
}

/// Held by the tests that measure this process's memory or use much of it (here and in
/// `health`), so that they do not blur each other's figures (the other tests' use is small
/// next to the bounds).
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Resident memory of this process (the proxy runs in it), in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Cases where pgpilot must answer exactly as PostgreSQL does: the same replies (tags and
/// SQLSTATEs), and a close where PostgreSQL closes.
#[test]
fn startup_and_protocol_violations_are_answered_as_postgres_answers() {
    let _heavy = heavy();
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let direct: SocketAddr = format!("127.0.0.1:{}", c.ports[0]).parse().unwrap();
    let rss_before = rss_kib();
    let many_params: Vec<(String, String)> = (0..700)
        .map(|i| (format!("x.p{i}"), "v".to_owned()))
        .collect();
    let mut many: Vec<(&str, &str)> = vec![("user", "app"), ("database", "app")];
    many.extend(many_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "startup packet shorter than 8 bytes",
            vec![Step::Send(vec![0, 0, 0, 4]), Step::Frames],
        ),
        (
            "startup packet body longer than 10000 bytes",
            vec![Step::Send(vec![0, 0, 0x27, 0x15, 0, 3, 0, 0]), Step::Frames],
        ),
        (
            "protocol 3.1 gets NegotiateProtocolVersion",
            vec![Step::Send(startup_version(3, 1, APP)), Step::Frames],
        ),
        (
            "protocol 2.0 is refused",
            vec![Step::Send(startup_version(2, 0, APP)), Step::Frames],
        ),
        (
            "protocol 4.0 is refused",
            vec![Step::Send(startup_version(4, 0, APP)), Step::Frames],
        ),
        (
            "SSLRequest gets N, then startup goes on",
            vec![
                Step::Send(untagged(80_877_103, &[])),
                Step::Byte,
                Step::Send(startup(APP)),
                Step::Frames,
            ],
        ),
        (
            "a second SSLRequest is an error",
            vec![
                Step::Send(untagged(80_877_103, &[])),
                Step::Byte,
                Step::Send(untagged(80_877_103, &[])),
                Step::Frames,
            ],
        ),
        (
            "GSSENCRequest gets N, then startup goes on",
            vec![
                Step::Send(untagged(80_877_104, &[])),
                Step::Byte,
                Step::Send(startup(APP)),
                Step::Frames,
            ],
        ),
        (
            "CancelRequest with unknown keys is closed silently",
            vec![
                Step::Send(untagged(80_877_102, &[0, 0, 0, 7, 0, 0, 0, 9])),
                Step::Frames,
            ],
        ),
        (
            "startup parameters without their terminator",
            vec![
                Step::Send(untagged(196_608, b"user\0app\0database\0app")),
                Step::Frames,
            ],
        ),
        (
            "an empty startup parameter name before the end",
            vec![
                Step::Send(untagged(196_608, b"user\0app\0\0database\0app\0\0")),
                Step::Frames,
            ],
        ),
        (
            "startup packet without user",
            vec![Step::Send(startup(&[("database", "app")])), Step::Frames],
        ),
        (
            "an unknown user fails like a wrong password",
            vec![
                Step::Send(startup(&[("user", "nobody"), ("database", "app")])),
                Step::Frames,
                Step::Send(sasl_initial("SCRAM-SHA-256", b"n,,n=,r=0123456789abcdef")),
                Step::Frames,
            ],
        ),
        (
            "seven hundred startup parameters",
            vec![Step::Send(startup(&many)), Step::Frames],
        ),
        (
            "malformed SCRAM client-first",
            vec![
                Step::Send(startup(APP)),
                Step::Frames,
                Step::Send(sasl_initial("SCRAM-SHA-256", b"garbage")),
                Step::Frames,
            ],
        ),
        (
            "SCRAM with an unknown mechanism",
            vec![
                Step::Send(startup(APP)),
                Step::Frames,
                Step::Send(sasl_initial("SCRAM-MD4", b"n,,n=,r=0123456789abcdef")),
                Step::Frames,
            ],
        ),
        (
            "malformed SCRAM client-final",
            vec![
                Step::Send(startup(APP)),
                Step::Frames,
                Step::Send(sasl_initial("SCRAM-SHA-256", b"n,,n=,r=0123456789abcdef")),
                Step::Frames,
                Step::Send(tagged(b'p', b"c=biws,r=not-the-nonce,p=AAAA")),
                Step::Frames,
            ],
        ),
        (
            "a message other than a password during authentication",
            vec![
                Step::Send(startup(APP)),
                Step::Frames,
                Step::Send(tagged(b'Q', b"SELECT 1\0")),
                Step::Frames,
            ],
        ),
    ];
    let mut report = Vec::new();
    let mut differ = Vec::new();
    for (what, steps) in &cases {
        let want = probe(direct, steps);
        let got = probe(proxy.addr(), steps);
        report.push(format!("{what}:\n  postgres {want:?}\n  pgpilot  {got:?}"));
        // pgpilot never speaks GSSAPI: it declines as a server built without it does, and the
        // client goes on without encryption. PostgreSQL here was built with GSSAPI and accepts.
        let gss = *what == "GSSENCRequest gets N, then startup goes on";
        let expected = if gss {
            Outcome {
                replies: vec![Reply::Byte(b'N'), Reply::Msg('R')],
                closed: false,
            }
        } else {
            want.clone()
        };
        if got != expected {
            differ.push(*what);
        }
        still_serves(proxy.addr(), what);
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        differ.is_empty(),
        "pgpilot answers otherwise than PostgreSQL: {differ:?}"
    );
    // A wrong SCRAM proof, through a real client exchange.
    for addr in [direct, proxy.addr()] {
        let e = Raw::connect(addr, "app", "wrong", &[]).err();
        assert_eq!(
            e.map(|(code, severity, _)| (code, severity)),
            Some(("28P01".to_owned(), "FATAL".to_owned())),
            "a wrong proof at {addr}"
        );
    }
    still_serves(proxy.addr(), "a wrong SCRAM proof");
    // Seven hundred startup parameters all the way: each reaches the backend that serves.
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &many[2..]).expect("login");
    assert_eq!(raw.query("SHOW x.p699").unwrap(), ["v"]);
    let rss_after = rss_kib();
    eprintln!("RSS of the test process around the battery: {rss_before} KiB before, {rss_after} KiB after");
}

/// Messages a logged-in client must not send. PostgreSQL answers some with an ERROR and goes
/// on; pgpilot always ends the session with FATAL 08P01, since it cannot be sure where the
/// next message starts or what a backend would make of the rest.
#[test]
fn malformed_messages_after_login_get_08p01_and_close() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let direct: SocketAddr = format!("127.0.0.1:{}", c.ports[0]).parse().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an empty Query (Q 0 0 0 4)", vec![b'Q', 0, 0, 0, 4]),
        ("a Query without its NUL", tagged(b'Q', b"SELECT 1")),
        (
            "a Query with bytes after its NUL",
            tagged(b'Q', b"SELECT 1\0junk"),
        ),
        ("a length word under 4", vec![b'Q', 0, 0, 0, 3]),
        ("a message type that does not exist", tagged(b'z', b"")),
        (
            "a password message nobody asked for",
            tagged(b'p', b"secret\0"),
        ),
        ("a Parse without its query", tagged(b'P', b"s1\0")),
        ("a Bind without its statement name", tagged(b'B', b"portal")),
        ("a Describe of neither S nor P", tagged(b'D', b"Xname\0")),
        ("a Close without a name", tagged(b'C', b"S")),
    ];
    let mut report = Vec::new();
    for (what, bytes) in &cases {
        let want = after_login(direct, bytes);
        let got = after_login(proxy.addr(), bytes);
        report.push(format!("{what}:\n  postgres {want:?}\n  pgpilot  {got:?}"));
        assert_eq!(
            got.error(),
            Some(("FATAL", "08P01")),
            "{what}: pgpilot's answer {got:?}"
        );
        assert!(got.closed, "{what}: the session is closed");
        if let Some((_, code)) = want.error() {
            assert_eq!(code, "08P01", "{what}: PostgreSQL's SQLSTATE too");
        }
        still_serves(proxy.addr(), what);
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn slowloris_at_startup_is_closed_by_startup_timeout() {
    let Some(c) = common::cluster() else { return };
    let text = common::config_text(c, &Opts::default())
        .replace("startup_timeout_ms = 5000", "startup_timeout_ms = 800");
    let config = pgpilot::Config::parse(&text, std::path::Path::new("slow.toml")).unwrap();
    let proxy = pgpilot::Proxy::start(config).unwrap();
    // Half a startup packet, then a byte now and then: never finished.
    let mut slow = TcpStream::connect(proxy.addr()).unwrap();
    let packet = startup(APP);
    slow.write_all(&packet[..6]).unwrap();
    let start = Instant::now();
    for b in &packet[6..10] {
        std::thread::sleep(Duration::from_millis(150));
        let _ = slow.write_all(&[*b]);
        // Others are served while it dawdles.
        still_serves(proxy.addr(), "during a slow startup");
    }
    let mut buf = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = slow.read_to_end(&mut buf);
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "closed after startup_timeout_ms, not later: {waited:?}"
    );
    // And a client who sends nothing at all.
    let mut mute = TcpStream::connect(proxy.addr()).unwrap();
    assert!(
        is_closed_within(&mut mute, Duration::from_secs(4)),
        "a mute client is closed"
    );
    still_serves(proxy.addr(), "after the slow clients");
}

fn is_closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if is_closed(s) {
            return true;
        }
    }
    false
}

/// A message that never finishes after login holds no backend: with one backend connection
/// for everybody, others keep being served while it trickles in.
#[test]
fn slowloris_after_login_holds_no_backend() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_size: 1,
            workers: 1,
            checkout_timeout_ms: 1000,
            ..Opts::default()
        },
    );
    let mut slow = logged_in(proxy.addr());
    let mut frame = tagged(b'Q', b"SELECT 'finally'\0");
    let tail = frame.split_off(7);
    slow.write_all(&frame).unwrap();
    for b in &tail {
        still_serves(proxy.addr(), "while a message trickles in");
        slow.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    // Once whole, the slow message is served too.
    let mut raw_rest = BytesMut::new();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = String::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = slow.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before answering");
        raw_rest.extend_from_slice(&chunk[..n]);
        let mut done = false;
        while let Some(f) = split_frame(&mut raw_rest, 1 << 20).unwrap() {
            if f.tag == b'D' {
                got = String::from_utf8_lossy(&f.bytes[11..]).into_owned();
            }
            done |= f.tag == b'Z';
        }
        if done {
            break;
        }
    }
    assert_eq!(got, "finally");
}

/// Thousands of clients that connect and leave at once (or mid-startup) leave nothing behind:
/// with `max_client_connections = 50`, fifty clients still get in afterwards.
#[test]
fn bursts_of_connect_and_close_leave_nothing_behind() {
    let _heavy = heavy();
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            max_clients: 50,
            ..Opts::default()
        },
    );
    let addr = proxy.addr();
    let rss_before = rss_kib();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..500 {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    match (t + i) % 3 {
                        0 => {}
                        1 => {
                            let _ = s.write_all(&startup(APP)[..9]);
                        }
                        _ => {
                            let _ = s.write_all(&startup(APP));
                        }
                    }
                    drop(s);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut held = Vec::new();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            while held.len() < 50 {
                match Raw::connect(addr, "app", "app", &[]) {
                    Ok(r) => held.push(r),
                    Err(_) => return false,
                }
            }
            true
        }),
        "every client slot came back after the burst ({} got in)",
        held.len()
    );
    for r in &mut held {
        assert_eq!(r.query("SELECT 1").unwrap(), ["1"]);
    }
    eprintln!(
        "RSS around 2,000 connect-and-close: {rss_before} KiB before, {} KiB after",
        rss_kib()
    );
}

/// A client that sends without ever reading its results: the proxy stops reading it once the
/// buffers between are full, so its memory stays bounded, and the session's end frees all.
#[test]
fn a_client_that_never_reads_is_held_back_with_bounded_memory() {
    let _heavy = heavy();
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_size: 1,
            workers: 1,
            ..Opts::default()
        },
    );
    let mut s = logged_in(proxy.addr());
    let rss_before = rss_kib();
    // Each query is 100 kB long and returns 1 MB; 400 of them would be 40 MB of queries and
    // 400 MB of results never read, far more than the socket buffers between can hold.
    let sql = format!(
        "SELECT repeat('x', 1000000) /* {} */\0",
        "p".repeat(100_000)
    );
    let one = tagged(b'Q', sql.as_bytes());
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut sent = 0;
    for _ in 0..400 {
        if s.write_all(&one).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(
        sent < 400,
        "the proxy stopped taking queries it cannot answer"
    );
    std::thread::sleep(Duration::from_secs(1));
    let grown = rss_kib().saturating_sub(rss_before);
    eprintln!(
        "a client that never reads: {sent} queries taken, RSS grew {grown} KiB ({rss_before} KiB before)"
    );
    assert!(
        grown < 64 * 1024,
        "memory stays bounded: grew {grown} KiB with {sent} MB of results unread"
    );
    drop(s);
    // The backend it held is released (or closed): the one connection serves the next client.
    assert!(common::eventually(Duration::from_secs(20), || {
        Raw::connect(proxy.addr(), "app", "app", &[])
            .ok()
            .and_then(|mut r| r.query("SELECT 2").ok())
            == Some(vec!["2".to_owned()])
    }));
}

/// Writes `messages` down one logged-in connection from one thread while another reads the
/// results, as libpq's pipeline mode does; returns how many ReadyForQuery came back in time.
fn pipeline_through(addr: SocketAddr, messages: Vec<u8>, queries: usize) -> usize {
    let mut s = logged_in(addr);
    let mut reader = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = s.write_all(&messages);
    });
    reader
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = BytesMut::new();
    let mut ready = 0;
    while ready < queries {
        let mut chunk = [0u8; 65536];
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(f) = split_frame(&mut buf, 1 << 30).unwrap() {
            ready += usize::from(f.tag == b'Z');
        }
    }
    let _ = reader.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    ready
}

/// A query with 50 MB of results followed at once by a 16 MB query, written while the results
/// are read. A relay that writes one way at a time deadlocks here: it is busy writing the big
/// query while the backend, whose output nobody reads, has stopped reading. pgpilot writes to
/// the backend and reads its results at the same time.
#[test]
fn a_multi_megabyte_pipeline_does_not_deadlock() {
    let _heavy = heavy();
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            max_message_bytes: 64 << 20,
            ..Opts::default()
        },
    );
    let direct: SocketAddr = format!("127.0.0.1:{}", c.ports[0]).parse().unwrap();
    let mut messages = tagged(
        b'Q',
        b"SELECT repeat('r', 1000) FROM generate_series(1, 50000)\0",
    );
    let big = format!("SELECT 1 /* {} */\0", "w".repeat(16 << 20));
    messages.extend_from_slice(&tagged(b'Q', big.as_bytes()));
    assert_eq!(
        pipeline_through(direct, messages.clone(), 2),
        2,
        "straight to PostgreSQL"
    );
    assert_eq!(
        pipeline_through(proxy.addr(), messages, 2),
        2,
        "through pgpilot"
    );
    still_serves(proxy.addr(), "after a large pipeline");
}

/// Reads one query's messages as they stream by, without holding their bodies: `(tag,
/// length)` of each up to ReadyForQuery (ParameterStatus left out), how many `fill` bytes the
/// bodies of `counted` messages held, and the highest RSS seen meanwhile.
fn walk_messages(s: &mut TcpStream, counted: u8, fill: u8) -> (Vec<(u8, usize)>, usize, u64) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut messages: Vec<(u8, usize)> = Vec::new();
    let (mut header, mut body_left, mut filled) = (Vec::new(), 0usize, 0usize);
    let (mut peak, mut since_sample) = (rss_kib(), 0usize);
    let mut chunk = vec![0u8; 1 << 16];
    while messages.last().map(|m| m.0) != Some(b'Z') || body_left > 0 {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before ReadyForQuery");
        since_sample += n;
        if since_sample > 4 << 20 {
            peak = peak.max(rss_kib());
            since_sample = 0;
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            if body_left > 0 {
                let take = body_left.min(rest.len());
                if messages.last().map(|m| m.0) == Some(counted) {
                    filled += rest[..take].iter().filter(|&&b| b == fill).count();
                }
                body_left -= take;
                rest = &rest[take..];
                continue;
            }
            header.push(rest[0]);
            rest = &rest[1..];
            if header.len() == 5 {
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                messages.push((header[0], len as usize));
                body_left = len as usize - 4;
                header.clear();
            }
        }
    }
    messages.retain(|m| m.0 != b'S');
    (messages, filled, peak)
}

/// A client can make PostgreSQL send one huge row (here 200 MB). pgpilot passes a long row on
/// as it arrives instead of buffering it whole: its memory does not grow by the row's size,
/// and the messages that arrive are PostgreSQL's, every byte of the row once.
#[test]
fn a_huge_row_is_streamed_not_buffered() {
    let _heavy = heavy();
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut s = logged_in(proxy.addr());
    let rss_before = rss_kib();
    s.write_all(&tagged(b'Q', b"SELECT repeat('x', 200000000)\0"))
        .unwrap();
    let (messages, xs, peak) = walk_messages(&mut s, b'D', b'x');
    let grown = peak.saturating_sub(rss_before);
    eprintln!("a 200 MB row: RSS peak {grown} KiB above {rss_before} KiB");
    let tags: Vec<u8> = messages.iter().map(|m| m.0).collect();
    assert_eq!(tags, b"TDCZ");
    assert_eq!(
        messages[1].1,
        4 + 2 + 4 + 200_000_000,
        "one column of 200 MB"
    );
    assert_eq!(xs, 200_000_000, "every byte of the row arrived once");
    assert!(
        grown < 64 * 1024,
        "the row passed through without being held whole: grew {grown} KiB"
    );
    still_serves(proxy.addr(), "after a huge row");
}

/// The same for COPY out: one 100 MB CopyData.
#[test]
fn a_huge_copy_data_is_streamed_not_buffered() {
    let _heavy = heavy();
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut s = logged_in(proxy.addr());
    let rss_before = rss_kib();
    s.write_all(&tagged(
        b'Q',
        b"COPY (SELECT repeat('y', 100000000)) TO STDOUT\0",
    ))
    .unwrap();
    let (messages, ys, peak) = walk_messages(&mut s, b'd', b'y');
    let grown = peak.saturating_sub(rss_before);
    eprintln!("a 100 MB CopyData: RSS peak {grown} KiB above {rss_before} KiB");
    let tags: Vec<u8> = messages.iter().map(|m| m.0).collect();
    assert_eq!(
        tags, b"HdcCZ",
        "CopyOutResponse, CopyData, CopyDone, CommandComplete, RFQ"
    );
    assert_eq!(messages[1].1, 4 + 100_000_001, "the row and its newline");
    assert_eq!(ys, 100_000_000, "every byte of the row arrived once");
    assert!(grown < 64 * 1024, "grew {grown} KiB");
    still_serves(proxy.addr(), "after a huge COPY");
}

/// The proxy keeps every named statement's text; a client may not hold more than
/// `routing.max_client_statements` at once. One more is an ERROR (the session goes on), and
/// closing one makes room.
#[test]
fn named_statements_beyond_the_limit_are_refused() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            extra: "\n[routing]\nmax_client_statements = 3\n",
            ..Opts::default()
        },
    );
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let prepare = |raw: &mut Raw, name: &str| {
        let mut out = BytesMut::new();
        encode::parse(&mut out, name.as_bytes(), b"SELECT 7", &[]);
        encode::sync(&mut out);
        raw.send(&out);
        crate::raw::rows_of(&raw.until_ready())
    };
    for name in ["s1", "s2", "s3"] {
        prepare(&mut raw, name).unwrap();
    }
    let e = prepare(&mut raw, "s4").unwrap_err();
    assert_eq!((e.0.as_str(), e.1.as_str()), ("53400", "ERROR"));
    assert_eq!(raw.query("SELECT 1").unwrap(), ["1"], "the session goes on");
    // Preparing one it already has again is no new statement (pgpilot accepts the same text
    // under the same name; PostgreSQL would say 42P05).
    prepare(&mut raw, "s3").unwrap();
    assert_eq!(raw.run_prepared(b"s3").unwrap(), ["7"]);
    let mut out = BytesMut::new();
    encode::close(&mut out, b'S', b"s1");
    encode::sync(&mut out);
    raw.send(&out);
    crate::raw::rows_of(&raw.until_ready()).unwrap();
    prepare(&mut raw, "s4").unwrap();
    assert_eq!(raw.run_prepared(b"s4").unwrap(), ["7"]);
}

/// Headers that announce huge messages cost nothing until the bytes come: fifty clients that
/// each claim a 60 MB Query and send five bytes of it do not make the proxy reserve 3 GB.
#[test]
fn announced_lengths_are_not_reserved_before_the_bytes_arrive() {
    let Some(c) = common::cluster() else { return };
    let _heavy = heavy();
    let proxy = common::proxy(
        c,
        &Opts {
            max_message_bytes: 64 << 20,
            ..Opts::default()
        },
    );
    // Address space, not RSS: reserved memory is not resident until written.
    let vm_before = vm_kib();
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut s = logged_in(proxy.addr());
        let mut head = vec![b'Q'];
        head.extend_from_slice(&(60u32 << 20).to_be_bytes());
        head.extend_from_slice(b"SELECT");
        s.write_all(&head).unwrap();
        held.push(s);
    }
    still_serves(proxy.addr(), "while fifty huge messages are announced");
    let grown = vm_kib().saturating_sub(vm_before);
    eprintln!("fifty 60 MB announcements: address space grew {grown} KiB");
    assert!(grown < 1024 * 1024, "grew {grown} KiB");
}

/// Address space of this process, in KiB.
fn vm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Every session-level SET is replayed on each backend that serves the client later; a client
/// that keeps setting new parameters is pinned to its backend past 256 instead of making that
/// set grow without bound. Its settings all stay in force.
#[test]
fn endless_sets_pin_the_client_instead_of_growing_its_replayed_set() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    for i in 0..300 {
        raw.query(&format!("SET x.p{i} = 'v{i}'")).unwrap();
    }
    assert_eq!(raw.query("SHOW x.p0").unwrap(), ["v0"]);
    assert_eq!(raw.query("SHOW x.p299").unwrap(), ["v299"]);
    assert_eq!(raw.query("BEGIN; SHOW x.p150; COMMIT").unwrap(), ["v150"]);
    still_serves(proxy.addr(), "after three hundred SETs");
}

/// A long row right after a response the proxy makes up (the CloseComplete of a named
/// statement it closes itself) still streams, with the made-up response first, in order —
/// whether the row's start arrives in the same read as the response before it (the made-up
/// one is then due in front of a partial row) or in a later one.
#[test]
fn a_huge_row_after_a_made_up_response_streams_in_order() {
    let Some(c) = common::cluster() else { return };
    let _heavy = heavy();
    let proxy = common::proxy(c, &Opts::default());
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let mut out = BytesMut::new();
    encode::parse(&mut out, b"s1", b"SELECT 1", &[]);
    encode::sync(&mut out);
    raw.send(&out);
    crate::raw::rows_of(&raw.until_ready()).unwrap();
    let rss_before = rss_kib();
    let mut out = BytesMut::new();
    encode::parse(&mut out, b"", b"SELECT repeat('z', 100000000)", &[]);
    encode::bind(&mut out, b"", b"", &[]);
    encode::close(&mut out, b'S', b"s1");
    encode::execute(&mut out, b"", 0);
    encode::sync(&mut out);
    raw.send(&out);
    let (messages, zs, peak) = walk_messages(&mut raw.stream, b'D', b'z');
    let grown = peak.saturating_sub(rss_before);
    eprintln!(
        "a 100 MB row after a made-up CloseComplete: RSS peak {grown} KiB above {rss_before} KiB"
    );
    let tags: Vec<u8> = messages.iter().map(|m| m.0).collect();
    assert_eq!(
        tags, b"123DCZ",
        "ParseComplete, BindComplete, CloseComplete, the row, …"
    );
    assert_eq!(zs, 100_000_000);
    assert!(grown < 64 * 1024, "grew {grown} KiB");
}
