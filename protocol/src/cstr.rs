//! nom parsers for the primitive fields inside a frame: C strings and big-endian integers.

use memchr::memchr;
use nom::error::{Error, ErrorKind};
use nom::IResult;

/// A NUL-terminated string: returns the bytes before the NUL and the input after it.
pub fn cstr(input: &[u8]) -> IResult<&[u8], &[u8]> {
    match memchr(0, input).and_then(|nul| input.split_at_checked(nul)) {
        Some((s, rest)) => Ok((rest.get(1..).unwrap_or_default(), s)),
        None => Err(nom::Err::Error(Error::new(input, ErrorKind::TakeUntil))),
    }
}

/// A NUL-terminated string that must be UTF-8.
pub fn cstr_utf8(input: &[u8]) -> IResult<&[u8], &str> {
    let (rest, raw) = cstr(input)?;
    match std::str::from_utf8(raw) {
        Ok(s) => Ok((rest, s)),
        Err(_) => Err(nom::Err::Error(Error::new(input, ErrorKind::Char))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_stops_at_the_first_nul() {
        assert_eq!(cstr(b"ab\0cd\0").unwrap(), (&b"cd\0"[..], &b"ab"[..]));
        assert!(cstr(b"abc").is_err());
    }
}
