//! Cuts arbitrary bytes into frames three ways — `split_frame` on the whole buffer, `split_frame`
//! fed in two reads, and `FrameScan` — and checks that they agree with each other and with
//! `Header::peek`, under an arbitrary length limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgpilot_protocol::frame::{split_frame, Frame, FrameScan, Header};
use pgpilot_protocol::ProtocolError;

/// The largest limit tried. `split_frame` reserves up to the announced length once the header
/// passes the limit, so the limit is what keeps a hostile length from allocating; the daemon's
/// `max_message_bytes` is megabytes, and 16 MiB keeps each run well inside libFuzzer's RSS cap.
const LIMIT_CAP: u32 = 1 << 24;

/// How one pass over the input ended.
#[derive(Debug, PartialEq)]
enum End {
    /// Needs more bytes; what is left in the buffer.
    NeedMore(usize),
    Error(ProtocolError),
}

/// Splits `buf` until it needs more bytes or hits a bad length, checking each frame as it comes.
fn split_all(buf: &mut BytesMut, max_len: u32, frames: &mut Vec<Frame>) -> End {
    loop {
        let before = buf.len();
        match split_frame(buf, max_len) {
            Ok(Some(f)) => {
                let h = Header::peek(&f.bytes, max_len)
                    .expect("a frame that was cut has a valid header")
                    .expect("a frame that was cut has five bytes");
                assert_eq!(h.tag, f.tag);
                assert!(
                    h.msg_len >= 4 && h.msg_len <= max_len,
                    "{h:?} over {max_len}"
                );
                assert_eq!(f.bytes.len(), h.frame_len());
                assert_eq!(f.bytes.len(), 1 + h.msg_len as usize);
                assert!(f.bytes.len() <= 1 + max_len as usize);
                assert_eq!(f.body().len(), h.body_len());
                assert_eq!(buf.len() + f.bytes.len(), before, "bytes lost or invented");
                frames.push(f);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                if let Ok(Some(h)) = Header::peek(buf, max_len) {
                    assert!(h.frame_len() > buf.len(), "a whole frame was left behind");
                    assert!(
                        buf.capacity() >= h.frame_len(),
                        "not reserved for the frame"
                    );
                } else {
                    assert!(buf.len() < 5, "a full header neither split nor refused");
                }
                return End::NeedMore(buf.len());
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "an error consumed bytes");
                match e {
                    ProtocolError::BadLength { tag, msg_len } => {
                        assert!(msg_len < 4);
                        assert_eq!(Some(&tag), buf.first());
                    }
                    ProtocolError::TooLarge { tag, msg_len } => {
                        assert!(msg_len > max_len);
                        assert_eq!(Some(&tag), buf.first());
                    }
                    other => panic!("framing reported {other:?}"),
                }
                assert_eq!(Header::peek(buf, max_len), Err(e));
                return End::Error(e);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, wire)) = data.split_first_chunk::<6>() else {
        return;
    };
    let max_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) % (LIMIT_CAP + 1);
    let cut = usize::from(u16::from_le_bytes([head[4], head[5]])).min(wire.len());

    // Whole buffer at once.
    let mut buf = BytesMut::from(wire);
    let mut frames = Vec::new();
    let end = split_all(&mut buf, max_len, &mut frames);
    let used: usize = frames.iter().map(|f| f.bytes.len()).sum();
    assert!(used <= wire.len());
    let joined: Vec<u8> = frames
        .iter()
        .flat_map(|f| f.bytes.iter().copied())
        .collect();
    assert_eq!(
        &joined[..],
        &wire[..used],
        "frames are not the input, in order"
    );
    assert_eq!(&buf[..], &wire[used..]);

    // The same bytes in two reads: the frames must not depend on where a read ends.
    let mut buf2 = BytesMut::from(&wire[..cut]);
    let mut frames2 = Vec::new();
    let first = split_all(&mut buf2, max_len, &mut frames2);
    if matches!(first, End::NeedMore(_)) {
        buf2.extend_from_slice(&wire[cut..]);
        let second = split_all(&mut buf2, max_len, &mut frames2);
        assert_eq!(second, end, "two reads ended differently from one");
        assert_eq!(frames2, frames, "two reads cut different frames");
    } else {
        // A bad length in the first read is the same bad length the whole buffer hits.
        assert_eq!(first, end);
        assert_eq!(frames2, frames);
    }

    // FrameScan walks the same frames without cutting them.
    let mut scan = FrameScan::new(wire, max_len);
    let mut n = 0;
    let mut at_expected = 0;
    for r in scan.by_ref() {
        let f = frames
            .get(n)
            .expect("FrameScan yielded more frames than split_frame");
        assert_eq!(r.at, at_expected);
        assert_eq!(r.tag(), f.tag);
        assert_eq!(r.header.frame_len(), f.bytes.len());
        assert_eq!(r.bytes, &f.bytes[..]);
        assert_eq!(r.body(), f.body());
        assert_eq!(&wire[r.at..r.end()], &f.bytes[..]);
        at_expected += r.header.frame_len();
        n += 1;
    }
    assert_eq!(
        n,
        frames.len(),
        "FrameScan yielded fewer frames than split_frame"
    );
    assert_eq!(scan.position(), used);
    match end {
        End::Error(e) => assert_eq!(scan.error(), Some(e)),
        End::NeedMore(_) => assert_eq!(scan.error(), None),
    }
    assert_eq!(scan.next(), None, "FrameScan resumed after stopping");
});
