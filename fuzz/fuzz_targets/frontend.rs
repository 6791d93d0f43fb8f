//! Feeds arbitrary bytes to every frontend view: as a framed client stream walked with
//! `FrameScan`, as the body of each frontend tag, to the body-level parsers directly, and
//! through the writers in `encode` and back.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgpilot_protocol::frame::FrameScan;
use pgpilot_protocol::frontend::{
    parse_param_count, password, statement_of, FrontendMessage, FrontendTag, SaslInitialResponse,
};
use pgpilot_protocol::{encode, ProtocolError};

const MAX: u32 = 1 << 20;

/// Every tag `FrontendTag` knows, to give each one every body.
const TAGS: &[u8] = b"QPBDESHCdcfpFX";

/// Whether `inner` is a sub-slice of `outer`: views must borrow from the frame, not copy.
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

/// A C string read from the frame: borrowed from it and free of NULs.
fn check_cstr(frame: &[u8], s: &[u8]) {
    assert!(within(frame, s), "a view points outside its frame");
    assert!(!s.contains(&0), "a C string view contains its NUL");
}

/// Parses one whole frame and checks what a successful or failed parse promises.
fn check_frame(frame: &[u8]) {
    let tag = frame.first().copied();
    let body = frame.get(5..).unwrap_or_default();
    let parsed = FrontendMessage::parse(frame);
    let known = tag.map(FrontendTag::try_from);
    if let Some(Ok(t)) = known {
        assert_eq!(Some(t as u8), tag, "FrontendTag does not round-trip");
    }
    let msg = match parsed {
        Ok(msg) => msg,
        Err(e) => {
            match (known, e) {
                (Some(Err(_)), ProtocolError::UnknownTag { tag: t }) => assert_eq!(tag, Some(t)),
                (None, ProtocolError::UnknownTag { tag: 0 }) => {}
                // A frame too short for its length word is refused before its tag is looked up.
                (Some(_), ProtocolError::Malformed { tag: t, .. }) if frame.len() < 5 => {
                    assert_eq!(tag, Some(t))
                }
                (Some(Ok(_)), ProtocolError::Malformed { tag: t, .. }) => assert_eq!(tag, Some(t)),
                (k, e) => panic!("tag {tag:?} ({k:?}) failed with {e:?}"),
            }
            return;
        }
    };
    assert!(frame.len() >= 5, "a frame without a length word parsed");
    use FrontendMessage as M;
    let expected_tag = match &msg {
        M::Query { sql } => {
            check_cstr(frame, sql);
            assert_eq!(body.get(sql.len()), Some(&0));
            b'Q'
        }
        M::Parse {
            name,
            query,
            param_types,
        } => {
            check_cstr(frame, name);
            check_cstr(frame, query);
            assert_eq!(statement_of(body), Ok((*name, *query)));
            assert_eq!(parse_param_count(body), Some(param_types.len() as u16));
            // The types were really there: four bytes each after the two strings and the count.
            assert!(name.len() + query.len() + 4 + 4 * param_types.len() <= body.len());
            b'P'
        }
        M::Bind { portal, statement } => {
            check_cstr(frame, portal);
            check_cstr(frame, statement);
            b'B'
        }
        M::Describe { kind, name } | M::Close { kind, name } => {
            assert!(*kind == b'S' || *kind == b'P', "kind {kind}");
            assert_eq!(body.first(), Some(kind));
            check_cstr(frame, name);
            if matches!(msg, M::Describe { .. }) {
                b'D'
            } else {
                b'C'
            }
        }
        M::Execute { portal, max_rows } => {
            check_cstr(frame, portal);
            let n = body
                .get(portal.len() + 1..portal.len() + 5)
                .expect("row count present");
            assert_eq!(
                i32::from_be_bytes(n.try_into().expect("four bytes")),
                *max_rows
            );
            b'E'
        }
        M::Sync => b'S',
        M::Flush => b'H',
        M::CopyData { data } => {
            assert_eq!(*data, body);
            b'd'
        }
        M::CopyDone => b'c',
        M::CopyFail { message } => {
            check_cstr(frame, message);
            b'f'
        }
        M::Password { body: b } => {
            assert_eq!(*b, body);
            check_password_body(b);
            b'p'
        }
        M::FunctionCall { oid } => {
            assert_eq!(body.get(..4).map(|o| o == oid.to_be_bytes()), Some(true));
            b'F'
        }
        M::Terminate => b'X',
    };
    assert_eq!(tag, Some(expected_tag), "{msg:?} parsed from another tag");
}

/// The three readings of a `p` body the session may try, depending on the auth in progress.
fn check_password_body(body: &[u8]) {
    match password(body) {
        Ok(p) => {
            check_cstr(body, p);
            assert_eq!(body.get(p.len()), Some(&0));
        }
        Err(_) => assert!(!body.contains(&0)),
    }
    if let Ok(r) = SaslInitialResponse::parse(body) {
        let m = r.mechanism.as_bytes();
        check_cstr(body, m);
        let after = m.len() + 1;
        match r.data {
            Some(d) => {
                assert!(within(body, d));
                assert_eq!(
                    after + 4 + d.len(),
                    body.len(),
                    "data is not the rest of the body"
                );
                let len = i32::from_be_bytes(body[after..after + 4].try_into().expect("4"));
                assert_eq!(len as usize, d.len());
            }
            None => assert_eq!(body.get(after..after + 4), Some(&[0xff; 4][..])),
        }
    }
}

/// Checks the body-level helpers that the daemon calls on a Parse body without a full parse.
fn check_parse_body(body: &[u8]) {
    match statement_of(body) {
        Ok((name, query)) => {
            check_cstr(body, name);
            check_cstr(body, query);
            if let Some(n) = parse_param_count(body) {
                let at = name.len() + query.len() + 2;
                assert_eq!(body.get(at..at + 2), Some(&n.to_be_bytes()[..]));
            }
        }
        Err(_) => assert_eq!(parse_param_count(body), None),
    }
}

/// Builds a frame with a correct length word around `body`.
fn frame_of(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + body.len());
    f.push(tag);
    f.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Encodes messages from pieces of the input and checks that parsing returns the same fields.
fn round_trip(data: &[u8]) {
    // The writers take C strings: NUL-free pieces are the inputs they accept.
    let mut parts = data.split(|&b| b == 0);
    let a = parts.next().unwrap_or_default();
    let b = parts.next().unwrap_or_default();
    let c = parts.next().unwrap_or_default();
    let types: Vec<u32> = c
        .chunks_exact(4)
        .take(64)
        .map(|t| u32::from_be_bytes(t.try_into().expect("4")))
        .collect();
    let num = |s: &[u8]| s.iter().fold(0u32, |n, &x| n.rotate_left(8) ^ u32::from(x));
    let kind = if num(a) & 1 == 0 { b'S' } else { b'P' };
    let mut buf = BytesMut::new();
    encode::query(&mut buf, a);
    encode::parse(&mut buf, a, b, &types);
    encode::bind(&mut buf, a, b, &[Some(c), None]);
    encode::describe(&mut buf, kind, a);
    encode::execute(&mut buf, b, num(c) as i32);
    encode::close(&mut buf, kind, b);
    encode::copy_data(&mut buf, data);
    encode::copy_fail(&mut buf, c);
    encode::function_call(&mut buf, num(b));
    encode::password_message(&mut buf, a);
    encode::sasl_initial_response(&mut buf, "SCRAM-SHA-256", data);
    encode::sasl_response(&mut buf, data);
    encode::sync(&mut buf);
    use FrontendMessage as M;
    let want = [
        M::Query { sql: a },
        M::Parse {
            name: a,
            query: b,
            param_types: types.clone(),
        },
        M::Bind {
            portal: a,
            statement: b,
        },
        M::Describe { kind, name: a },
        M::Execute {
            portal: b,
            max_rows: num(c) as i32,
        },
        M::Close { kind, name: b },
        M::CopyData { data },
    ];
    let mut scan = FrameScan::new(&buf, u32::MAX);
    let mut frames = Vec::new();
    for f in scan.by_ref() {
        assert_eq!(f.bytes, &buf[f.at..f.end()]);
        frames.push(f.bytes);
    }
    assert_eq!(scan.error(), None);
    assert_eq!(
        scan.position(),
        buf.len(),
        "the writers left a partial frame"
    );
    assert_eq!(frames.len(), 13);
    for (frame, want) in frames.iter().zip(&want) {
        assert_eq!(
            &FrontendMessage::parse(frame).expect("own message parses"),
            want
        );
    }
    let parsed: Vec<_> = frames.iter().map(|f| FrontendMessage::parse(f)).collect();
    assert_eq!(parsed[7], Ok(M::CopyFail { message: c }));
    assert_eq!(parsed[8], Ok(M::FunctionCall { oid: num(b) }));
    let Ok(M::Password { body }) = parsed[9] else {
        panic!("password message parsed as {:?}", parsed[9]);
    };
    assert_eq!(password(body), Ok(a));
    let Ok(M::Password { body }) = parsed[10] else {
        panic!("SASLInitialResponse parsed as {:?}", parsed[10]);
    };
    let sasl = SaslInitialResponse::parse(body).expect("own SASLInitialResponse parses");
    assert_eq!((sasl.mechanism, sasl.data), ("SCRAM-SHA-256", Some(data)));
    assert_eq!(parsed[11], Ok(M::Password { body: data }));
    assert_eq!(parsed[12], Ok(M::Sync));
    for f in &frames {
        check_frame(f);
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. A client stream: every whole frame in it, parsed by its own tag.
    let mut scan = FrameScan::new(data, MAX);
    for f in scan.by_ref() {
        assert_eq!(f.bytes.len(), f.header.frame_len());
        check_frame(f.bytes);
    }
    // 2. The first byte picks a tag, the rest is its body; and the raw bytes as a frame.
    if let Some((&pick, body)) = data.split_first() {
        check_frame(&frame_of(TAGS[usize::from(pick) % TAGS.len()], body));
        check_frame(&frame_of(pick, body));
        check_password_body(body);
        check_parse_body(body);
    }
    check_frame(data);
    // 3. Writers and readers agree.
    round_trip(data);
});
