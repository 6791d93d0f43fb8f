//! Cuts a byte stream into whole tagged PostgreSQL messages without copying them.

use bytes::{Bytes, BytesMut};

use crate::ProtocolError;

/// The tag and length word that start every tagged message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message type byte.
    pub tag: u8,
    /// The length word: counts itself and the body, not the tag.
    pub msg_len: u32,
}

/// Whether a `usize` holds the frame length (one more than `msg_len`): always on 64-bit
/// targets, where this compiles to nothing; all but `u32::MAX` on 32-bit ones.
fn frame_len_fits(msg_len: u32) -> bool {
    usize::try_from(msg_len).is_ok_and(|n| n < usize::MAX)
}

impl Header {
    /// `Ok(None)` until five bytes are buffered; lengths are checked before anyone allocates,
    /// and a length whose frame length would not fit in a `usize` is too large whatever
    /// `max_len` says.
    pub fn peek(buf: &[u8], max_len: u32) -> Result<Option<Header>, ProtocolError> {
        let Some(&[tag, a, b, c, d]) = buf.first_chunk::<5>() else {
            return Ok(None);
        };
        match u32::from_be_bytes([a, b, c, d]) {
            msg_len @ 0..=3 => Err(ProtocolError::BadLength { tag, msg_len }),
            msg_len if msg_len > max_len || !frame_len_fits(msg_len) => {
                Err(ProtocolError::TooLarge { tag, msg_len })
            }
            msg_len => Ok(Some(Header { tag, msg_len })),
        }
    }

    /// Bytes on the wire: tag + length word + body. Exact for a header from [`Header::peek`];
    /// a hand-made one too long for a `usize` saturates to a frame no buffer completes.
    pub fn frame_len(self) -> usize {
        (self.msg_len as usize).saturating_add(1)
    }

    /// Bytes of the body alone (0 for a hand-made length word under 4).
    pub fn body_len(self) -> usize {
        (self.msg_len as usize).saturating_sub(4)
    }
}

/// One whole message cut off a read buffer; `bytes` holds tag, length word and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The whole message as received, shared with the read buffer it came from.
    pub bytes: Bytes,
}

impl Frame {
    /// The body after the tag and length word.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(5..).unwrap_or_default()
    }
}

/// Cuts the next whole message off `buf`. `Ok(None)` means more bytes are needed; in that
/// case `buf` has been reserved up to the announced frame length so the next read can fill it.
pub fn split_frame(buf: &mut BytesMut, max_len: u32) -> Result<Option<Frame>, ProtocolError> {
    let Some(header) = Header::peek(buf, max_len)? else {
        return Ok(None);
    };
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        buf.reserve(frame_len.saturating_sub(buf.len()));
        return Ok(None);
    }
    Ok(Some(Frame {
        tag: header.tag,
        bytes: buf.split_to(frame_len).freeze(),
    }))
}

/// A whole message found in a buffer by [`FrameScan`], borrowed, not cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// Where the message starts in the scanned buffer.
    pub at: usize,
    /// Its tag and length word.
    pub header: Header,
    /// The whole message: tag, length word and body (`header.frame_len()` bytes).
    pub bytes: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.header.tag
    }

    /// The body after the tag and length word.
    pub fn body(&self) -> &'a [u8] {
        self.bytes.get(5..).unwrap_or_default()
    }

    /// Where the message ends in the scanned buffer.
    pub fn end(&self) -> usize {
        // Both count bytes of one buffer: the sum is at most its length.
        self.at.saturating_add(self.bytes.len())
    }
}

/// Walks the whole messages at the front of a buffer without cutting them.
///
/// Yields a [`FrameRef`] for each complete message; stops at the first incomplete one.
/// [`FrameScan::error`] tells whether it stopped on a bad length.
pub struct FrameScan<'a> {
    buf: &'a [u8],
    pos: usize,
    max_len: u32,
    error: Option<ProtocolError>,
}

impl<'a> FrameScan<'a> {
    /// Scans `buf` from its start.
    pub fn new(buf: &'a [u8], max_len: u32) -> Self {
        FrameScan {
            buf,
            pos: 0,
            max_len,
            error: None,
        }
    }

    /// Where the first message not yet yielded starts.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The protocol error that stopped the scan, if any.
    pub fn error(&self) -> Option<ProtocolError> {
        self.error
    }
}

impl<'a> Iterator for FrameScan<'a> {
    type Item = FrameRef<'a>;

    fn next(&mut self) -> Option<FrameRef<'a>> {
        let rest = self.buf.get(self.pos..)?;
        match Header::peek(rest, self.max_len) {
            Ok(Some(header)) => {
                let bytes = rest.get(..header.frame_len())?;
                let at = self.pos;
                // `bytes` lies in `buf` from `pos` on, so the sum is at most `buf.len()` and
                // cannot wrap; a saturating add cost this loop a sixth of its speed.
                self.pos = self.pos.wrapping_add(bytes.len());
                Some(FrameRef { at, header, bytes })
            }
            Ok(None) => None,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1 << 20;

    #[test]
    fn header_waits_for_five_bytes_then_reports_the_frame() {
        let wire = [b'Q', 0, 0, 0, 8, b'S', b'E', b'L', 0];
        for cut in 0..5 {
            assert_eq!(Header::peek(&wire[..cut], MAX), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            Header::peek(&wire, MAX).unwrap().unwrap().frame_len(),
            wire.len()
        );
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        assert_eq!(
            Header::peek(&[b'Q', 0, 0, 0, 3], MAX),
            Err(ProtocolError::BadLength {
                tag: b'Q',
                msg_len: 3
            })
        );
        assert_eq!(
            Header::peek(&[b'Q', 0x7f, 0xff, 0xff, 0xff], MAX),
            Err(ProtocolError::TooLarge {
                tag: b'Q',
                msg_len: 0x7fff_ffff
            })
        );
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(split_frame(&mut buf, MAX).is_err());
        assert!(
            buf.capacity() < 1024,
            "nothing was reserved for a rejected length"
        );
    }

    #[test]
    fn the_longest_length_word_never_overflows_the_frame_length() {
        // `1 + u32::MAX as usize` overflowed a 32-bit usize when nothing bounded the length:
        // a panic in debug builds, a frame length of 0 (and a scan that never moves) in release.
        let wire = [b'd', 0xff, 0xff, 0xff, 0xff];
        let peeked = Header::peek(&wire, u32::MAX);
        if usize::BITS > u32::BITS {
            let header = peeked.unwrap().unwrap();
            assert_eq!(header.frame_len() as u64, 1 << 32);
            assert_eq!(header.body_len() as u64, (1 << 32) - 5);
        } else {
            let too_large = ProtocolError::TooLarge {
                tag: b'd',
                msg_len: u32::MAX,
            };
            assert_eq!(peeked, Err(too_large));
        }
        let mut scan = FrameScan::new(&wire, u32::MAX);
        assert_eq!(scan.next(), None);
        assert_eq!(scan.position(), 0);
        // Hand-made headers saturate instead of wrapping.
        let short = Header {
            tag: b'd',
            msg_len: 2,
        };
        assert_eq!((short.frame_len(), short.body_len()), (3, 0));
    }

    #[test]
    fn split_at_every_offset_yields_the_same_frames() {
        let wire: Vec<u8> = [
            &[b'P', 0, 0, 0, 6, b'x', 0][..],
            &[b'S', 0, 0, 0, 4][..],
            &[b'Q', 0, 0, 0, 5, 0][..],
        ]
        .concat();
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = split_frame(&mut buf, MAX).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = split_frame(&mut buf, MAX).unwrap() {
                got.push(f);
            }
            let tags: Vec<u8> = got.iter().map(|f| f.tag).collect();
            assert_eq!(tags, b"PSQ", "cut at {cut}");
            assert_eq!(got[0].body(), b"x\0");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn scan_stops_at_the_first_partial_frame() {
        let wire = [b'S', 0, 0, 0, 4, b'H', 0, 0, 0, 4, b'Q', 0, 0];
        let mut scan = FrameScan::new(&wire, MAX);
        assert_eq!(scan.next().map(|f| (f.at, f.tag())), Some((0, b'S')));
        let h = scan.next().unwrap();
        assert_eq!((h.at, h.tag(), h.body(), h.end()), (5, b'H', &[][..], 10));
        assert_eq!(scan.next(), None);
        assert_eq!(scan.position(), 10);
        assert_eq!(scan.error(), None);
    }
}
