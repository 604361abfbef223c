//! xlReg/2 framing: every message on the wire is a big-endian u32 length followed by that
//! many bytes.
//!
//! This module owns the pure codec: [`encode`] writes a frame, [`FrameDecoder`] accumulates
//! bytes as they arrive (in whatever pieces TCP delivers them) and yields whole frames. It
//! refuses a length above its limit as soon as the four prefix bytes are in, so a peer can
//! never make it buffer more than the limit. No I/O here: the registry's xlReg/2 session core
//! decodes with it (and the driver moves the bytes), the client library through `connection`.

/// Size of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// The largest frame payload the protocol allows (1 MiB). Receivers may set a lower limit
/// for what they accept; a client must accept frames up to this size.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Why the incoming byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The receiver's limit.
        max: usize,
    },
}

/// Encodes `payload` as one frame.
///
/// Payloads are produced by this crate and bounded by [`MAX_FRAME_LEN`]; the prefix cannot
/// overflow.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LENGTH_PREFIX_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: usize,
    buffer: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder that accepts frames of at most `max_len` payload bytes (capped at
    /// [`MAX_FRAME_LEN`]).
    pub fn new(max_len: usize) -> FrameDecoder {
        FrameDecoder {
            max_len: max_len.min(MAX_FRAME_LEN),
            buffer: Vec::new(),
        }
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Removes and returns the next whole frame's payload, `Ok(None)` if more bytes are
    /// needed, or an error if the announced length is over the limit (the connection must
    /// then be closed: the stream cannot be resynchronised).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(prefix) = self.buffer.get(..LENGTH_PREFIX_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; LENGTH_PREFIX_LEN];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_len,
            });
        }
        let end = LENGTH_PREFIX_LEN + len;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let payload = self.buffer[LENGTH_PREFIX_LEN..end].to_vec();
        self.buffer.drain(..end);
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_one_piece() {
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        decoder.push(&encode(b"hello"));
        assert_eq!(decoder.next_frame(), Ok(Some(b"hello".to_vec())));
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn frames_split_byte_by_byte_are_reassembled() {
        let mut wire = encode(b"first");
        wire.extend(encode(b""));
        wire.extend(encode(b"third one"));
        let mut decoder = FrameDecoder::new(64);
        let mut frames = Vec::new();
        for byte in wire {
            decoder.push(&[byte]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            vec![b"first".to_vec(), Vec::new(), b"third one".to_vec()]
        );
    }

    #[test]
    fn oversize_length_is_refused_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX as u64,
                max: 1024
            })
        );
    }

    #[test]
    fn limit_is_capped_at_the_protocol_maximum() {
        let mut decoder = FrameDecoder::new(usize::MAX);
        decoder.push(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        assert!(decoder.next_frame().is_err());
    }
}
