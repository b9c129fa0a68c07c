//! Size-prefixed frames: a big-endian `i32` length, then that many bytes.
//!
//! The length is checked against a hard maximum *before* any buffer grows, so
//! a peer that announces a 2 GiB frame costs us four bytes, not two gigabytes.

use bytes::{Buf, BufMut, BytesMut};

/// Bytes taken by the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be read; every variant closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {length} is negative")]
    NegativeLength { length: i32 },
    #[error("frame of {length} bytes exceeds the maximum of {max} bytes")]
    TooLarge { length: usize, max: usize },
}

/// The length a frame at the front of `buf` announces, once its prefix has
/// arrived (unchecked: [`decode_frame`] refuses what is out of bounds).
pub fn frame_length(buf: &[u8]) -> Option<i32> {
    let prefix: [u8; LENGTH_PREFIX_BYTES] = buf.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
    Some(i32::from_be_bytes(prefix))
}

/// Takes one whole frame (without its prefix) off the front of `buf`, or
/// returns `Ok(None)` when more bytes are needed.
pub fn decode_frame(buf: &mut BytesMut, frame_bytes_max: usize) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let length = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if length < 0 {
        return Err(FrameError::NegativeLength { length });
    }
    let length = length as usize;
    if length > frame_bytes_max {
        return Err(FrameError::TooLarge {
            length,
            max: frame_bytes_max,
        });
    }
    if buf.len() < LENGTH_PREFIX_BYTES + length {
        // Reserve only what this frame still needs; bounded by the check above.
        buf.reserve(LENGTH_PREFIX_BYTES + length - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(buf.split_to(length)))
}

/// Starts a frame: writes a placeholder prefix and returns its position, to be
/// filled in by [`finish_frame`] once the body is written.
pub fn begin_frame(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Fills in the length prefix written by [`begin_frame`].
pub fn finish_frame(buf: &mut BytesMut, at: usize) {
    let length = (buf.len() - at - LENGTH_PREFIX_BYTES) as i32;
    buf[at..at + LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 5, 1, 2][..]);
        assert_eq!(decode_frame(&mut buf, 100), Ok(None));
        buf.extend_from_slice(&[3, 4, 5, 9]);
        let frame = decode_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(&frame[..], &[1, 2, 3, 4, 5]);
        assert_eq!(&buf[..], &[9]);
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&0x7fff_ffffi32.to_be_bytes()[..]);
        assert!(matches!(decode_frame(&mut buf, 1024), Err(FrameError::TooLarge { .. })));
        assert!(buf.capacity() < 1024);
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert_eq!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::NegativeLength { length: -1 })
        );
    }

    proptest! {
        #[test]
        fn framing_round_trips(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut wire = BytesMut::new();
            for body in &bodies {
                let at = begin_frame(&mut wire);
                wire.extend_from_slice(body);
                finish_frame(&mut wire, at);
            }
            for body in &bodies {
                let frame = decode_frame(&mut wire, 1000).unwrap().unwrap();
                prop_assert_eq!(&frame[..], &body[..]);
            }
            prop_assert!(wire.is_empty());
        }

        #[test]
        fn any_bytes_give_a_frame_an_error_or_a_wait(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&data[..]);
            let _ = decode_frame(&mut buf, 32);
        }
    }
}
