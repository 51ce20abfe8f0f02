//! Raw framing: `u32 header_len | u32 body_len | header | body`, big-endian.
//!
//! This layer knows lengths and limits, nothing about JSON. A decoder first
//! [`check`]s the 8-byte prefix — which rejects oversized frames before a single
//! byte of them is buffered — and only slices the frame out once all of it has
//! arrived. Partial input is never consumed: the caller keeps reading and asks
//! again.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::limits::{Limits, PREFIX_LEN};

/// One frame as it travels: the header bytes (a JSON object, see
/// [`crate::codec::Header`]) and the raw body bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawFrame {
    /// The header bytes.
    pub header: Bytes,
    /// The body bytes; empty for most messages.
    pub body: Bytes,
}

/// The outcome of looking at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The buffer does not hold the whole frame yet; `needed` more bytes are
    /// required (at least — the prefix may still be incomplete).
    NeedMore {
        /// Bytes still missing.
        needed: usize,
    },
    /// A whole frame of `len` bytes (prefix included) starts the buffer.
    Complete {
        /// Total frame length, prefix included.
        len: usize,
        /// Header length.
        header_len: usize,
    },
}

/// Reads the prefix at the start of `buf` and says whether a whole frame is there.
///
/// Errors as soon as the prefix announces a header or body over `limits`, so a
/// reader never buffers more than [`Limits::max_frame`] bytes.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Check, DecodeError> {
    if buf.len() < PREFIX_LEN {
        return Ok(Check::NeedMore {
            needed: PREFIX_LEN - buf.len(),
        });
    }
    let header_len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let body_len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if header_len > limits.max_header {
        return Err(DecodeError::HeaderTooLarge {
            len: header_len,
            max: limits.max_header,
        });
    }
    if body_len > limits.max_body {
        return Err(DecodeError::BodyTooLarge {
            len: body_len,
            max: limits.max_body,
        });
    }
    let len = PREFIX_LEN + header_len as usize + body_len as usize;
    if buf.len() < len {
        Ok(Check::NeedMore {
            needed: len - buf.len(),
        })
    } else {
        Ok(Check::Complete {
            len,
            header_len: header_len as usize,
        })
    }
}

/// Takes one whole frame off the front of `buf` without copying it, or returns
/// `Ok(None)` (leaving `buf` untouched) when more bytes are needed.
pub fn decode_buf(buf: &mut BytesMut, limits: &Limits) -> Result<Option<RawFrame>, DecodeError> {
    match check(buf, limits)? {
        Check::NeedMore { .. } => Ok(None),
        Check::Complete { len, header_len } => {
            let mut frame = buf.split_to(len);
            frame.advance(PREFIX_LEN);
            let header = frame.split_to(header_len).freeze();
            Ok(Some(RawFrame {
                header,
                body: frame.freeze(),
            }))
        }
    }
}

/// Decodes the frame at the start of `buf`, copying it out, and returns it with
/// the number of bytes it occupies; `Ok(None)` when more bytes are needed.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(RawFrame, usize)>, DecodeError> {
    match check(buf, limits)? {
        Check::NeedMore { .. } => Ok(None),
        Check::Complete { len, header_len } => {
            let header_end = PREFIX_LEN + header_len;
            Ok(Some((
                RawFrame {
                    header: Bytes::copy_from_slice(&buf[PREFIX_LEN..header_end]),
                    body: Bytes::copy_from_slice(&buf[header_end..len]),
                },
                len,
            )))
        }
    }
}

/// Decodes `buf` as exactly one frame: a short buffer is [`DecodeError::Truncated`],
/// bytes after the frame are [`DecodeError::TrailingBytes`].
pub fn decode_exact(buf: &[u8], limits: &Limits) -> Result<RawFrame, DecodeError> {
    match check(buf, limits)? {
        Check::NeedMore { needed } => Err(DecodeError::Truncated { needed }),
        Check::Complete { len, .. } if len < buf.len() => Err(DecodeError::TrailingBytes {
            extra: buf.len() - len,
        }),
        Check::Complete { .. } => Ok(decode(buf, limits)?
            .expect("check said the frame is complete")
            .0),
    }
}

impl RawFrame {
    /// A frame from its parts, refused if either part exceeds `limits`.
    pub fn new(header: Bytes, body: Bytes, limits: &Limits) -> Result<RawFrame, EncodeError> {
        if header.len() > limits.max_header as usize {
            return Err(EncodeError::HeaderTooLarge {
                len: header.len(),
                max: limits.max_header,
            });
        }
        if body.len() > limits.max_body as usize {
            return Err(EncodeError::BodyTooLarge {
                len: body.len(),
                max: limits.max_body,
            });
        }
        Ok(RawFrame { header, body })
    }

    /// The 8-byte length prefix of this frame.
    pub fn prefix(&self) -> [u8; PREFIX_LEN] {
        // Lengths fit in u32: `new` bounds them by u32 limits, and the decoder
        // only ever produces lengths it read from a u32 prefix.
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[..4].copy_from_slice(&(self.header.len() as u32).to_be_bytes());
        prefix[4..].copy_from_slice(&(self.body.len() as u32).to_be_bytes());
        prefix
    }

    /// Total encoded length, prefix included.
    pub fn encoded_len(&self) -> usize {
        PREFIX_LEN + self.header.len() + self.body.len()
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.prefix());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.body);
    }

    /// The encoded frame as one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(header: &[u8], body: &[u8]) -> RawFrame {
        RawFrame::new(
            Bytes::copy_from_slice(header),
            Bytes::copy_from_slice(body),
            &Limits::default(),
        )
        .unwrap()
    }

    #[test]
    fn oversized_header_is_refused_from_the_prefix_alone() {
        let limits = Limits {
            max_header: 16,
            max_body: 16,
        };
        // Only the prefix has arrived: the verdict must not wait for the rest.
        let prefix = [0, 0, 0, 17, 0, 0, 0, 0];
        assert_eq!(
            check(&prefix, &limits),
            Err(DecodeError::HeaderTooLarge { len: 17, max: 16 })
        );
        let prefix = [0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            check(&prefix, &limits),
            Err(DecodeError::BodyTooLarge {
                len: u32::MAX,
                max: 16
            })
        );
    }

    #[test]
    fn limits_are_inclusive() {
        let limits = Limits {
            max_header: 4,
            max_body: 3,
        };
        let f = RawFrame::new(
            Bytes::from_static(b"abcd"),
            Bytes::from_static(b"xyz"),
            &limits,
        )
        .unwrap();
        assert_eq!(decode_exact(&f.to_vec(), &limits).unwrap(), f);
        assert!(matches!(
            RawFrame::new(Bytes::from_static(b"abcde"), Bytes::new(), &limits),
            Err(EncodeError::HeaderTooLarge { len: 5, max: 4 })
        ));
    }

    #[test]
    fn decode_exact_rejects_trailing_and_truncated_input() {
        let mut bytes = frame(b"{}", b"body").to_vec();
        let limits = Limits::default();
        assert_eq!(
            decode_exact(&bytes[..bytes.len() - 1], &limits),
            Err(DecodeError::Truncated { needed: 1 })
        );
        bytes.push(0);
        assert_eq!(
            decode_exact(&bytes, &limits),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn decode_buf_leaves_partial_input_untouched() {
        let encoded = frame(b"{\"id\":1}", b"123").to_vec();
        let mut buf = BytesMut::from(&encoded[..encoded.len() - 1]);
        assert_eq!(decode_buf(&mut buf, &Limits::default()), Ok(None));
        assert_eq!(&buf[..], &encoded[..encoded.len() - 1]);
    }

    proptest! {
        #[test]
        fn round_trip_split_at_every_boundary(
            header in proptest::collection::vec(any::<u8>(), 0..64),
            body in proptest::collection::vec(any::<u8>(), 0..256),
            next in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let f = frame(&header, &body);
            let encoded = f.to_vec();
            let limits = Limits::default();
            for split in 0..=encoded.len() {
                // Feed the frame in two pieces, the way a socket might deliver it.
                let mut buf = BytesMut::from(&encoded[..split]);
                if split < encoded.len() {
                    prop_assert_eq!(decode_buf(&mut buf, &limits)?, None);
                    prop_assert_eq!(buf.len(), split, "partial input was consumed");
                    match check(&buf, &limits)? {
                        Check::NeedMore { needed } => prop_assert!(needed >= 1 && needed <= encoded.len() - split),
                        Check::Complete { .. } => prop_assert!(false, "complete before the end"),
                    }
                }
                buf.extend_from_slice(&encoded[split..]);
                buf.extend_from_slice(&next);
                let got = decode_buf(&mut buf, &limits)?.expect("whole frame present");
                prop_assert_eq!(&got, &f);
                prop_assert_eq!(&buf[..], &next[..], "bytes after the frame must remain");
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let limits = Limits { max_header: 128, max_body: 128 };
            let _ = decode(&bytes, &limits);
            let _ = decode_exact(&bytes, &limits);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = decode_buf(&mut buf, &limits) {
                prop_assert!(f.header.len() <= 128 && f.body.len() <= 128);
            }
        }
    }
}
