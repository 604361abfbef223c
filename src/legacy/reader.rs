//! Reassembling xlReg 1.9 messages from an unframed byte stream.
//!
//! The 1.9 wire has no framing: the Go peers write each message with one `write()` and
//! treat whatever one `read()` returns as one whole message, which breaks as soon as TCP
//! splits a message or a peer is slow. This module owns the robust replacement, as a pure
//! accumulator (the registry's session, and the 1.9 client reading replies, feed it whatever
//! the socket delivers):
//! - the hello is exactly as long as the registry's RSA modulus (256 bytes for RSA-2048),
//!   and its reply is always 64 bytes, so each is complete when that many bytes are in
//!   ([`Assembler::take_exact`]);
//! - a session message is `IV || whole AES blocks`, so each time the buffer reaches such a
//!   length, [`Assembler::take_message`] tries to decrypt, strictly unpad and decode it, and
//!   accepts it only if it is an XLRegMsg with a known Op; otherwise it waits for more bytes.
//!
//! The search is bounded: at most `max_len` bytes are buffered and at most
//! [`MAX_DECODE_ATTEMPTS`] decodes are tried for one message (a message TCP splits at
//! random points reaches a block-aligned length only now and then; a peer that trickles
//! 16 bytes at a time to make the registry decode over and over is refused). The read
//! timeout lives in the glue (`legacy::server`).
//!
//! The ambiguity this leaves: if a message is split exactly at a block boundary, its first
//! part could, by chance, end in valid PKCS#7 padding and decode as a valid XLRegMsg with a
//! known Op; it would then be taken for a whole message. That needs the split to fall on a
//! block boundary (1 in 16), the decrypted byte before the split to be valid padding (about
//! 1 in 256 for the common one-byte case) and the truncated protobuf to still parse with its
//! Op (the Op is always the first field, but truncating inside any later length-delimited
//! field makes parsing fail). 1.9 clients are lock-step, so nothing else is in flight to
//! mix up, and the Go peers themselves fail on every split message; the residual risk is a
//! refused or misread request on a rare split, never a crash.

use crate::crypto::{AES_BLOCK_LEN, AES_KEY_LEN};
use crate::legacy::wire::{self, IV_LEN, MIN_MESSAGE_LEN};
use crate::proto::XlRegMsg;

/// Most decodes tried while one message accumulates. A message split by TCP into n
/// segments is tried at most n times; 64 KiB is under 50 segments of 1448 bytes.
pub const MAX_DECODE_ATTEMPTS: u32 = 64;

/// Why the buffered bytes will never become a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    /// More than the limit arrived without forming a valid message.
    #[error("no valid message in the {buffered} bytes received (the limit is {max})")]
    TooLarge {
        /// Bytes buffered.
        buffered: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes arrived in so many pieces that the registry stopped trying to decode them.
    #[error("no valid message after {MAX_DECODE_ATTEMPTS} tries; send each message in one write")]
    TooManyPieces,
}

/// Accumulates bytes from the peer until they form a hello or a message.
#[derive(Debug)]
pub struct Assembler {
    buffer: Vec<u8>,
    max_len: usize,
    attempts: u32,
}

impl Assembler {
    /// An empty accumulator that refuses to look beyond `max_len` bytes for one message.
    pub fn new(max_len: usize) -> Assembler {
        Assembler {
            buffer: Vec::new(),
            max_len,
            attempts: 0,
        }
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received and not yet taken.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Takes the first `len` bytes once that many are in (the hello).
    pub fn take_exact(&mut self, len: usize) -> Option<Vec<u8>> {
        if self.buffer.len() < len {
            return None;
        }
        let rest = self.buffer.split_off(len);
        Some(std::mem::replace(&mut self.buffer, rest))
    }

    /// Takes the buffered bytes as one session message under `key`, if they form one now.
    /// `Ok(None)`: not (yet) a message, read more.
    pub fn take_message(
        &mut self,
        key: &[u8; AES_KEY_LEN],
    ) -> Result<Option<XlRegMsg>, AssemblyError> {
        let len = self.buffer.len();
        if len > self.max_len {
            return Err(AssemblyError::TooLarge {
                buffered: len,
                max: self.max_len,
            });
        }
        if len < MIN_MESSAGE_LEN || !(len - IV_LEN).is_multiple_of(AES_BLOCK_LEN) {
            return Ok(None);
        }
        self.attempts += 1;
        match wire::open_message(key, &self.buffer) {
            Ok(msg) => {
                self.buffer.clear();
                self.attempts = 0;
                Ok(Some(msg))
            }
            Err(_) if self.attempts >= MAX_DECODE_ATTEMPTS => Err(AssemblyError::TooManyPieces),
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Tag;

    const KEY: [u8; AES_KEY_LEN] = [9u8; AES_KEY_LEN];

    fn create_msg(name: &str) -> XlRegMsg {
        XlRegMsg {
            op: Some(Tag::Create as i32),
            cluster_name: Some(name.to_string()),
            cluster_max_size: Some(4),
            ..XlRegMsg::default()
        }
    }

    #[test]
    fn a_message_split_anywhere_is_assembled() {
        let msg = create_msg(&"c".repeat(60));
        let wire = wire::seal_message(&KEY, &msg);
        for split in 1..wire.len() {
            let mut assembler = Assembler::new(64 * 1024);
            assembler.push(&wire[..split]);
            assert_eq!(assembler.take_message(&KEY).unwrap(), None, "split {split}");
            assembler.push(&wire[split..]);
            assert_eq!(assembler.take_message(&KEY).unwrap(), Some(msg.clone()));
            assert_eq!(assembler.buffered(), 0);
        }
    }

    #[test]
    fn the_hello_is_taken_at_its_exact_length() {
        let mut assembler = Assembler::new(1024);
        assembler.push(&[1u8; 200]);
        assert_eq!(assembler.take_exact(256), None);
        assembler.push(&[2u8; 60]);
        let hello = assembler.take_exact(256).unwrap();
        assert_eq!(hello.len(), 256);
        assert_eq!(assembler.buffered(), 4);
    }

    #[test]
    fn junk_waits_then_hits_the_bounds() {
        let mut assembler = Assembler::new(1024);
        // Not a whole number of blocks, or shorter than one: wait for more.
        assembler.push(&[0u8; 10]);
        assert_eq!(assembler.take_message(&KEY).unwrap(), None);
        assembler.push(&[0u8; 26]);
        assert_eq!(assembler.take_message(&KEY).unwrap(), None);
        assembler.push(&[0u8; 1000]);
        assert!(matches!(
            assembler.take_message(&KEY),
            Err(AssemblyError::TooLarge { .. })
        ));

        let mut trickle = Assembler::new(1 << 20);
        trickle.push(&[0u8; IV_LEN]);
        let mut refused = None;
        for round in 0..=MAX_DECODE_ATTEMPTS {
            trickle.push(&[0xA5u8; AES_BLOCK_LEN]);
            if let Err(error) = trickle.take_message(&KEY) {
                refused = Some((round, error));
                break;
            }
        }
        assert_eq!(
            refused,
            Some((MAX_DECODE_ATTEMPTS - 1, AssemblyError::TooManyPieces))
        );
    }
}
