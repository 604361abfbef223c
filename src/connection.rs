//! Moving xlReg/2 frames over a byte stream, with a deadline on every read and write.
//!
//! This module owns the tokio side of framing for the client library (after mini-redis's
//! `connection.rs`): it reads whatever the socket has into a [`FrameDecoder`] until a whole
//! frame is there, and writes frames out. Every read from a peer has a timeout, so a peer
//! that stops talking cannot hold a task forever. The registry's sessions do not use it: their
//! core decodes frames itself and the session driver (`crate::driver`) moves the bytes; they
//! share [`ConnectionError`] for what can go wrong on a socket.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, FrameDecoder, FrameError};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent nothing (or too little) for too long.
    #[error("peer sent nothing for {0:?}")]
    ReadTimeout(Duration),
    /// The peer did not take our bytes for too long.
    #[error("peer did not accept data for {0:?}")]
    WriteTimeout(Duration),
    /// The peer announced a frame larger than allowed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the connection in the middle of a frame.
    #[error("peer closed the connection mid-frame")]
    Truncated,
}

/// A framed connection over any byte stream.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    decoder: FrameDecoder,
    read_buffer: Box<[u8]>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps `stream`, accepting incoming frames of at most `max_frame` bytes.
    pub fn new(stream: S, max_frame: usize) -> Connection<S> {
        Connection {
            stream,
            decoder: FrameDecoder::new(max_frame),
            read_buffer: vec![0u8; 16 * 1024].into_boxed_slice(),
        }
    }

    /// Reads the next frame, waiting at most `timeout` in total. `Ok(None)` means the peer
    /// closed the connection cleanly between frames.
    pub async fn read_frame(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, ConnectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut self.read_buffer))
                .await
                .map_err(|_| ConnectionError::ReadTimeout(timeout))??;
            if read == 0 {
                return if self.decoder.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(ConnectionError::Truncated)
                };
            }
            self.decoder.push(&self.read_buffer[..read]);
        }
    }

    /// True if bytes of a frame not yet returned by [`Connection::read_frame`] have arrived.
    pub fn has_pending_input(&self) -> bool {
        self.decoder.buffered() > 0
    }

    /// Writes `payload` as one frame, waiting at most `timeout`.
    pub async fn write_frame(
        &mut self,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(), ConnectionError> {
        let bytes = frame::encode(payload);
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ConnectionError::WriteTimeout(timeout))??;
        Ok(())
    }

    /// Closes our sending side, telling the peer we are done.
    pub async fn shutdown(&mut self) {
        // The peer may already be gone; there is nothing useful to do about that.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    /// The underlying stream, to write bytes that are not frames (tests of hostile input).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}
