//! Feeds arbitrary bytes to every backend view: as a framed server stream walked with
//! `FrameScan`, as the body of each backend tag, and through the writers in `encode` and back.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgpilot_protocol::backend::{
    Authentication, BackendMessage, BackendTag, Fields, TransactionStatus,
};
use pgpilot_protocol::frame::FrameScan;
use pgpilot_protocol::{encode, ProtocolError};

const MAX: u32 = 1 << 20;

/// Every tag `BackendTag` knows, to give each one every body.
const TAGS: &[u8] = b"RSKZENCGHWdcATD123nsItVv";

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

fn check_cstr(frame: &[u8], s: &[u8]) {
    assert!(within(frame, s), "a view points outside its frame");
    assert!(!s.contains(&0), "a C string view contains its NUL");
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(
        b.get(..4)
            .expect("four bytes")
            .try_into()
            .expect("four bytes"),
    )
}

/// An ErrorResponse / NoticeResponse field list: what `iter` yields is exactly the body.
fn check_fields(body: &[u8], fields: Fields<'_>) {
    let mut rebuilt = Vec::new();
    for (code, value) in fields.iter() {
        assert_ne!(code, 0);
        check_cstr(body, value);
        assert!(fields.get(code).is_some());
        rebuilt.push(code);
        rebuilt.extend_from_slice(value);
        rebuilt.push(0);
    }
    rebuilt.push(0);
    assert_eq!(
        &body[..rebuilt.len()],
        &rebuilt[..],
        "fields are not the body"
    );
    let code = fields.code();
    match fields.get(b'C').map(std::str::from_utf8) {
        Some(Ok(c)) => assert_eq!(code, c),
        _ => assert_eq!(code, "XX000"),
    }
    let _ = fields.message();
}

fn check_frame(frame: &[u8]) {
    let tag = frame.first().copied();
    let body = frame.get(5..).unwrap_or_default();
    let known = tag.map(BackendTag::try_from);
    if let Some(Ok(t)) = known {
        assert_eq!(Some(t as u8), tag, "BackendTag does not round-trip");
    }
    let msg = match BackendMessage::parse(frame) {
        Ok(msg) => msg,
        Err(e) => {
            match (known, e) {
                (Some(Err(_)), ProtocolError::UnknownTag { tag: t }) => assert_eq!(tag, Some(t)),
                (None, ProtocolError::UnknownTag { tag: 0 }) => {}
                (Some(_), ProtocolError::Malformed { tag: t, .. }) if frame.len() < 5 => {
                    assert_eq!(tag, Some(t))
                }
                (Some(Ok(_)), ProtocolError::Malformed { tag: t, .. }) => assert_eq!(
                    tag,
                    Some(t),
                    "the error names another message than the one that failed"
                ),
                (k, e) => panic!("tag {tag:?} ({k:?}) failed with {e:?}"),
            }
            return;
        }
    };
    use BackendMessage as M;
    let expected_tag = match &msg {
        M::Authentication(auth) => {
            let code = be32(body);
            let rest = &body[4..];
            match auth {
                Authentication::Ok => assert_eq!(code, 0),
                Authentication::CleartextPassword => assert_eq!(code, 3),
                Authentication::Md5Password { salt } => {
                    assert_eq!(code, 5);
                    assert_eq!(&rest[..4], salt);
                }
                Authentication::Sasl { mechanisms } => {
                    assert_eq!(code, 10);
                    assert_eq!(*mechanisms, rest);
                    for m in Authentication::mechanisms(mechanisms) {
                        assert!(!m.is_empty());
                        check_cstr(frame, m);
                    }
                }
                Authentication::SaslContinue { data } => {
                    assert_eq!(code, 11);
                    assert_eq!(*data, rest);
                }
                Authentication::SaslFinal { data } => {
                    assert_eq!(code, 12);
                    assert_eq!(*data, rest);
                }
                Authentication::Unsupported { code: c } => {
                    assert_eq!(*c, code);
                    assert!(![0, 3, 5, 10, 11, 12].contains(c));
                }
            }
            b'R'
        }
        M::ParameterStatus { name, value } => {
            check_cstr(frame, name.as_bytes());
            check_cstr(frame, value.as_bytes());
            b'S'
        }
        M::BackendKeyData { pid, secret } => {
            assert_eq!((*pid, *secret), (be32(body), be32(&body[4..])));
            b'K'
        }
        M::ReadyForQuery { status } => {
            assert_eq!(Some(status.as_byte()), body.first().copied());
            assert_eq!(
                TransactionStatus::from_byte(status.as_byte()),
                Some(*status)
            );
            b'Z'
        }
        M::ErrorResponse(fields) => {
            check_fields(body, *fields);
            b'E'
        }
        M::NoticeResponse(fields) => {
            check_fields(body, *fields);
            b'N'
        }
        M::CommandComplete { tag } => {
            check_cstr(frame, tag);
            b'C'
        }
        M::CopyResponse {
            tag,
            format,
            columns,
        } => {
            assert_eq!(body.first(), Some(format));
            assert_eq!(body.get(1..3), Some(&columns.to_be_bytes()[..]));
            *tag as u8
        }
        M::NotificationResponse {
            pid,
            channel,
            payload,
        } => {
            assert_eq!(*pid, be32(body));
            check_cstr(frame, channel);
            check_cstr(frame, payload);
            b'A'
        }
        M::Other { tag } => {
            assert!(
                !b"RSKZENCGHWA".contains(&(*tag as u8)),
                "{tag:?} is decoded, not Other"
            );
            *tag as u8
        }
    };
    assert_eq!(tag, Some(expected_tag), "{msg:?} parsed from another tag");
}

fn frame_of(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + body.len());
    f.push(tag);
    f.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Encodes backend messages from pieces of the input and checks that they parse back.
fn round_trip(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let a = parts.next().unwrap_or_default();
    let b = parts.next().unwrap_or_default();
    let (sa, sb) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let num = |s: &[u8]| s.iter().fold(0u32, |n, &x| n.rotate_left(8) ^ u32::from(x));
    let status = [
        TransactionStatus::Idle,
        TransactionStatus::InTransaction,
        TransactionStatus::Failed,
    ][num(a) as usize % 3];
    let salt = num(b).to_be_bytes();
    let columns = (num(a) % 64) as u16;
    let mut buf = BytesMut::new();
    encode::auth_ok(&mut buf);
    encode::auth_cleartext(&mut buf);
    encode::auth_md5(&mut buf, salt);
    encode::auth_sasl(&mut buf, &[&sa, &sb]);
    encode::auth_sasl_continue(&mut buf, data);
    encode::auth_sasl_final(&mut buf, data);
    encode::parameter_status(&mut buf, &sa, &sb);
    encode::backend_key_data(&mut buf, num(a), num(b));
    encode::ready_for_query(&mut buf, status);
    encode::command_complete(&mut buf, a);
    encode::copy_in_response(&mut buf, salt[0], columns);
    encode::notification_response(&mut buf, num(b), a, b);
    let mut err = encode::ErrorFields::error("XX000", sa.clone());
    err.detail = Some(sb.to_string());
    encode::error_response(&mut buf, &err);
    encode::notice_response(&mut buf, &sb);
    encode::parse_complete(&mut buf);
    use BackendMessage as M;
    let want = [
        M::Authentication(Authentication::Ok),
        M::Authentication(Authentication::CleartextPassword),
        M::Authentication(Authentication::Md5Password { salt }),
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
    assert_eq!(frames.len(), 15);
    let parsed: Vec<_> = frames
        .iter()
        .map(|f| BackendMessage::parse(f).expect("own message parses"))
        .collect();
    assert_eq!(&parsed[..3], &want[..]);
    let M::Authentication(Authentication::Sasl { mechanisms }) = parsed[3] else {
        panic!("{:?}", parsed[3]);
    };
    let names: Vec<&[u8]> = Authentication::mechanisms(mechanisms).collect();
    let offered: Vec<&[u8]> = [sa.as_bytes(), sb.as_bytes()]
        .into_iter()
        .take_while(|m| !m.is_empty())
        .collect();
    assert_eq!(names, offered);
    assert_eq!(
        parsed[4],
        M::Authentication(Authentication::SaslContinue { data })
    );
    assert_eq!(
        parsed[5],
        M::Authentication(Authentication::SaslFinal { data })
    );
    assert_eq!(
        parsed[6],
        M::ParameterStatus {
            name: &sa,
            value: &sb
        }
    );
    assert_eq!(
        parsed[7],
        M::BackendKeyData {
            pid: num(a),
            secret: num(b)
        }
    );
    assert_eq!(parsed[8], M::ReadyForQuery { status });
    assert_eq!(parsed[9], M::CommandComplete { tag: a });
    assert_eq!(
        parsed[10],
        M::CopyResponse {
            tag: BackendTag::CopyInResponse,
            format: salt[0],
            columns
        }
    );
    assert_eq!(
        parsed[11],
        M::NotificationResponse {
            pid: num(b),
            channel: a,
            payload: b
        }
    );
    let M::ErrorResponse(fields) = parsed[12] else {
        panic!("{:?}", parsed[12]);
    };
    assert_eq!(fields.code(), "XX000");
    assert_eq!(fields.message(), sa);
    assert_eq!(fields.get(b'D'), Some(sb.as_bytes()));
    assert_eq!(fields.get(b'S'), Some(&b"ERROR"[..]));
    let M::NoticeResponse(fields) = parsed[13] else {
        panic!("{:?}", parsed[13]);
    };
    assert_eq!((fields.code(), fields.message()), ("00000", sb.to_string()));
    assert_eq!(
        parsed[14],
        M::Other {
            tag: BackendTag::ParseComplete
        }
    );
    for f in &frames {
        check_frame(f);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut scan = FrameScan::new(data, MAX);
    for f in scan.by_ref() {
        assert_eq!(f.bytes.len(), f.header.frame_len());
        check_frame(f.bytes);
    }
    if let Some((&pick, body)) = data.split_first() {
        check_frame(&frame_of(TAGS[usize::from(pick) % TAGS.len()], body));
        check_frame(&frame_of(pick, body));
        if let Ok(fields) = Fields::parse(body) {
            check_fields(body, fields);
        }
    }
    check_frame(data);
    round_trip(data);
});
