//! The control socket: how admin commands reach a running daemon.
//!
//! This module owns both ends. While the daemon runs, its store holds the data directory,
//! so `xlreg admin` asks the daemon instead, over the Unix socket `DATA_DIR/control.sock`.
//!
//! Security: the socket is created with mode 0600 inside a private 0700 directory and only
//! then renamed into place, so it is never reachable with looser permissions; on every
//! connection the daemon reads the peer's credentials (`SO_PEERCRED`) and serves only its own
//! effective uid, and the client likewise talks only to a daemon of its own uid. Requests are
//! read-only except `backup`, which hands out the registry's private keys, and so goes only
//! to the same user who can already read them in the data directory, and the deletes
//! (`delete-cluster`, `delete-node`), which that user could make offline too. A delete is
//! durable before it is answered, and sessions waiting on a deleted cluster are woken.
//!
//! Protocol: one JSON [`Request`] line from the client, one JSON response line back
//! (`{"ok": REPLY}` or `{"error": "message"}`), then the connection closes. A streamed
//! request ([`Request::is_streamed`]: export, backup) is answered with `{"stream":{}}`, then
//! frames (a u32 big-endian length and at most [`CHUNK_BYTES`] of the output, written from a
//! point-in-time view as they are read, at most `CHUNKS_IN_FLIGHT` waiting), a frame of length
//! 0, and the response line; the client writes each frame to its output as it arrives
//! ([`ControlConnection::ask_streamed`]), so neither end holds the whole answer. Requests are at
//! most [`MAX_REQUEST_BYTES`] and must arrive within [`REQUEST_TIMEOUT`]; replies are at most
//! [`MAX_RESPONSE_BYTES`]; at most [`MAX_CONCURRENT`] requests are served at once (more are
//! told the daemon is busy). The daemon answers with the same [`answer`] function an offline
//! command runs, on a blocking thread, so the output is the same either way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use super::{answer, AdminError, Reply, Request};
use crate::process::ReleaseEvery;
use crate::registry::Registry;

/// File name of the control socket in the data directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Mode of the control socket.
pub const SOCKET_MODE: u32 = 0o600;
/// Longest request line the daemon reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest response line the client reads (the cluster or node list of a very large
/// registry; exports and snapshots are streamed in frames instead).
pub const MAX_RESPONSE_BYTES: usize = 2 << 30;
/// How long the daemon waits for a client's request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to send a reply, and the client to accept it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the client waits for the daemon's whole answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest frame of a streamed answer the daemon sends.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// The largest frame of a streamed answer the client accepts.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// How many frames of a streamed answer wait in the daemon's memory at most.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Longest header or reply line of a streamed answer the client reads.
const MAX_STREAM_LINE_BYTES: usize = 64 * 1024;
/// Most requests the daemon serves at once.
pub const MAX_CONCURRENT: usize = 4;
/// How long stopping waits for requests in progress.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One response line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    /// The request's answer.
    Ok(Box<Reply>),
    /// A streamed answer follows: frames, the end frame, then the reply line.
    Stream(StreamStart),
    /// Why there is none; shown to the user as it is.
    Error(String),
    /// A refusal on the merits, of a kind the client maps as an offline command would.
    Refused {
        /// What kind.
        kind: super::RefusalKind,
        /// Shown to the user as it is.
        message: String,
    },
}

/// What starts a streamed answer (`{"stream":{}}`): nothing yet, room to grow.
#[derive(Debug, Serialize, Deserialize)]
struct StreamStart {}

/// The effective uid of this process.
pub(crate) fn own_uid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end of `stream` (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    Ok(stream.peer_cred()?.uid())
}

/// Reads one line of at most `limit` bytes (newline excluded) within `timeout`. Returns the
/// line without its newline; `Ok(None)` if the peer closed before sending anything.
async fn read_line(
    stream: &mut UnixStream,
    limit: usize,
    timeout: Duration,
) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let mut line = Zeroizing::new(Vec::new());
    let mut reader = BufReader::new(stream.take(limit as u64 + 1));
    let read = tokio::time::timeout(timeout, reader.read_until(b'\n', &mut line)).await;
    match read {
        Err(_) => Err(format!("no complete line within {timeout:?}")),
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) if line.last() == Some(&b'\n') => {
            line.pop();
            Ok(Some(line))
        }
        Ok(Ok(_)) if line.len() > limit => Err(format!("line longer than {limit} bytes")),
        Ok(Ok(_)) => Err("connection closed in the middle of a line".into()),
    }
}

/// Writes one JSON line and closes the writing side, within `timeout`.
async fn write_line(
    stream: &mut UnixStream,
    value: &impl Serialize,
    timeout: Duration,
) -> Result<(), String> {
    write_bytes(stream, &json_line(value)?, timeout).await
}

/// `value` as one JSON line, newline included.
fn json_line(value: &impl Serialize) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut line = Zeroizing::new(serde_json::to_vec(value).map_err(|e| e.to_string())?);
    line.push(b'\n');
    Ok(line)
}

/// Writes `line` (a whole line, newline included) and closes the writing side, within
/// `timeout`.
async fn write_bytes(
    stream: &mut UnixStream,
    line: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    send(stream, line, timeout).await?;
    tokio::time::timeout(timeout, stream.shutdown())
        .await
        .map_err(|_| format!("the peer did not take the reply within {timeout:?}"))?
        .map_err(|e| e.to_string())
}

/// Writes `bytes` within `timeout`, leaving the connection open.
async fn send(stream: &mut UnixStream, bytes: &[u8], timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(timeout, stream.write_all(bytes))
        .await
        .map_err(|_| format!("the peer did not take the reply within {timeout:?}"))?
        .map_err(|e| e.to_string())
}

/// The daemon's end: a listening control socket and the task serving it.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Binds the socket at `DIR/control.sock` with mode 0600 without ever exposing it with
/// looser permissions: bound inside a fresh private 0700 directory, chmodded, then renamed
/// into place. A stale socket left by a daemon that died is replaced.
fn bind(dir: &Path) -> Result<(UnixListener, PathBuf), AdminError> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    let path = dir.join(SOCKET_FILE);
    let control = |source| AdminError::Control {
        path: path.clone(),
        source,
    };
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path).map_err(control)?,
        Ok(_) => {
            return Err(control(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; remove it",
            )))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(control(error)),
    }
    let private = dir.join(format!(
        ".control-{}",
        &crate::id::Id::random(&mut rand::rng()).to_hex()[..12]
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(control)?;
    let staged = private.join(SOCKET_FILE);
    let result = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        std::fs::rename(&staged, &path)?;
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    Ok((result.map_err(control)?, path))
}

impl ControlServer {
    /// Starts serving admin requests for `registry` on `DATA_DIR/control.sock`. Must be
    /// called on a tokio runtime; the store must have a data directory.
    pub fn start(registry: Arc<Registry>) -> Result<ControlServer, AdminError> {
        let dir = registry
            .store
            .data_dir()
            .ok_or(AdminError::Ephemeral)?
            .to_path_buf();
        ControlServer::start_in(registry, &dir)
    }

    /// [`ControlServer::start`] with the socket in `dir`: the data directory of a daemon
    /// whose store keeps no directory of its own (etcd).
    pub fn start_in(registry: Arc<Registry>, dir: &Path) -> Result<ControlServer, AdminError> {
        let (listener, path) = bind(dir)?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, registry, stopped));
        tracing::info!(socket = %path.display(), "control socket listening");
        Ok(ControlServer { path, stop, task })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, gives requests in progress a few seconds, and removes the socket.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), %error, "could not remove the control socket");
        }
    }
}

async fn serve(
    listener: UnixListener,
    registry: Arc<Registry>,
    mut stopped: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let uid = own_uid();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = super::stop_requested(&mut stopped) => break,
            accepted = listener.accept() => {
                let mut stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let refusal = match peer_uid(&stream) {
                    Ok(peer) if peer == uid => None,
                    Ok(peer) => {
                        tracing::warn!(peer_uid = peer, "control connection refused: not the daemon's user");
                        Some(format!("refused: the control socket serves only uid {uid}"))
                    }
                    Err(error) => {
                        tracing::warn!(%error, "control connection refused: peer credentials unreadable");
                        Some("refused: peer credentials unreadable".to_string())
                    }
                };
                let permit = match refusal {
                    Some(_) => None,
                    None => limit.clone().try_acquire_owned().ok(),
                };
                let registry = registry.clone();
                tasks.spawn(async move {
                    match (refusal, permit) {
                        (Some(refusal), _) => {
                            let _ = write_line(&mut stream, &Response::Error(refusal), REQUEST_TIMEOUT).await;
                        }
                        (None, None) => {
                            let busy = Response::Error("the daemon is busy with other admin requests; try again".into());
                            let _ = write_line(&mut stream, &busy, REQUEST_TIMEOUT).await;
                        }
                        (None, Some(permit)) => {
                            handle(stream, registry).await;
                            drop(permit);
                        }
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
}

/// Serves one control connection: one request, one response.
async fn handle(mut stream: UnixStream, registry: Arc<Registry>) {
    let store = registry.store.clone();
    let started = Instant::now();
    let request = match read_line(&mut stream, MAX_REQUEST_BYTES, REQUEST_TIMEOUT).await {
        Ok(Some(line)) => serde_json::from_slice::<Request>(&line)
            .map_err(|e| format!("bad control request: {e}")),
        Ok(None) => return,
        Err(error) => Err(format!("bad control request: {error}")),
    };
    let op = request.as_ref().map(Request::op).unwrap_or("invalid");
    if let Ok(request) = &request {
        if request.is_streamed() {
            let request = request.clone();
            let registry = Arc::clone(&registry);
            let answering = move |out: &mut dyn std::io::Write| {
                let now_ms = crate::clock::now_ms();
                match request {
                    Request::Backup if registry.identity.handshake.is_sealed() => {
                        backup_sealed(&registry, now_ms, out)
                    }
                    ref request => answer(&*store, request, now_ms, out),
                }
            };
            let (result, sent) = stream_answer(&mut stream, answering).await;
            finish(op, result, sent, started).await;
            return;
        }
    }
    let response = match request {
        Err(error) => Response::Error(error),
        Ok(request) => response(
            tokio::task::spawn_blocking(move || match request {
                // The running registry's own key sets change, not a second copy of them.
                Request::RotateHandshakeKeys { overlap_ms } => super::rotate_handshake_keys(
                    &registry.identity,
                    overlap_ms,
                    crate::clock::now_ms(),
                ),
                request => answer(
                    &*store,
                    &request,
                    crate::clock::now_ms(),
                    &mut std::io::sink(),
                ),
            })
            .await,
        ),
    };
    let result = response.outcome();
    let sent = write_line(&mut stream, &response, WRITE_TIMEOUT).await;
    drop(response);
    finish(op, result, sent.is_ok(), started).await;
}

/// The response for what answering a request on a blocking thread gave.
fn response(answered: Result<Result<Reply, AdminError>, tokio::task::JoinError>) -> Response {
    match answered {
        // Sessions waiting on a deleted cluster are told by the store itself.
        Ok(Ok(reply)) => Response::Ok(Box::new(reply)),
        Ok(Err(error)) => match error.refusal() {
            Some(kind) => Response::Refused {
                kind,
                message: error.to_string(),
            },
            None => Response::Error(error.to_string()),
        },
        Err(error) => Response::Error(AdminError::Interrupted(error.to_string()).to_string()),
    }
}

impl Response {
    /// What the log says of it.
    fn outcome(&self) -> String {
        match self {
            Response::Ok(_) => "ok".to_string(),
            Response::Stream(_) => "streaming".to_string(),
            Response::Error(error) => format!("error: {error}"),
            Response::Refused { message, .. } => format!("refused: {message}"),
        }
    }
}

/// Backs up a running registry whose keys are kept sealed on a shared store (etcd), not
/// as files in its directory: the snapshot carries the identity it serves, so that
/// `xlreg admin restore` makes a sled registry with the same identity of it.
fn backup_sealed(
    registry: &Registry,
    now_ms: u64,
    out: &mut dyn std::io::Write,
) -> Result<Reply, AdminError> {
    let store = &registry.store;
    let meta = store
        .registry_meta()?
        .ok_or_else(|| AdminError::NoEtcdRegistry("the store".into()))?;
    let material = registry.identity.material(meta.created_at_ms, now_ms)?;
    let keys = super::backup::sealed_key_files(&material, now_ms)?;
    let summary = super::backup::write_with_keys(&*store.view()?, keys, now_ms, out)?;
    Ok(Reply::BackedUp(summary))
}

/// Answers a streamed request: the header line, the bytes in frames as a blocking thread
/// writes them from a point-in-time view (at most [`CHUNKS_IN_FLIGHT`] frames of
/// [`CHUNK_BYTES`] wait in memory), the end frame, then the reply line. If the client stops
/// reading, the writer's next frame fails and it stops. Returns what to log and whether
/// everything was sent.
async fn stream_answer(
    stream: &mut UnixStream,
    answering: impl FnOnce(&mut dyn std::io::Write) -> Result<Reply, AdminError> + Send + 'static,
) -> (String, bool) {
    let (chunks, mut received) = mpsc::channel::<Zeroizing<Vec<u8>>>(CHUNKS_IN_FLIGHT);
    let producer = tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender {
            chunks,
            buffer: Zeroizing::new(Vec::with_capacity(CHUNK_BYTES)),
            release: ReleaseEvery::default(),
        };
        let reply = answering(&mut out)?;
        std::io::Write::flush(&mut out).map_err(AdminError::Output)?;
        Ok(reply)
    });
    let header = Response::Stream(StreamStart {});
    let mut sent = match json_line(&header) {
        Ok(line) => send(stream, &line, WRITE_TIMEOUT).await.is_ok(),
        Err(_) => false,
    };
    while let Some(chunk) = received.recv().await {
        if !sent {
            break;
        }
        sent = send_frame(stream, &chunk).await.is_ok();
    }
    // The producer's next send fails once nobody receives: it stops.
    drop(received);
    let response = response(producer.await);
    let result = response.outcome();
    if sent {
        sent = match send_frame(stream, &[]).await {
            Ok(()) => write_line(stream, &response, WRITE_TIMEOUT).await.is_ok(),
            Err(_) => false,
        };
    }
    (result, sent)
}

/// The writer a streamed answer is written to on its blocking thread: hands the bytes to
/// the connection's task in chunks of [`CHUNK_BYTES`].
struct ChunkSender {
    chunks: mpsc::Sender<Zeroizing<Vec<u8>>>,
    buffer: Zeroizing<Vec<u8>>,
    /// Hands freed memory back as the answer streams.
    release: ReleaseEvery,
}

impl ChunkSender {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(
            &mut self.buffer,
            Zeroizing::new(Vec::with_capacity(CHUNK_BYTES)),
        );
        let sent = chunk.len();
        self.chunks.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the admin client stopped reading",
            )
        })?;
        self.release.passed(sent);
        Ok(())
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let taken = bytes.len().min(CHUNK_BYTES - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}

/// Sends one frame of a streamed answer: its length (u32, big-endian), then its bytes.
async fn send_frame(stream: &mut UnixStream, bytes: &[u8]) -> Result<(), String> {
    let mut frame = Zeroizing::new(Vec::with_capacity(4 + bytes.len()));
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(bytes);
    send(stream, &frame, WRITE_TIMEOUT).await
}

/// Logs an answered request and, after one that copied the whole registry, gives that memory
/// back.
async fn finish(op: &str, result: String, sent: bool, started: Instant) {
    tracing::info!(
        op,
        result,
        sent,
        duration_ms = started.elapsed().as_millis() as u64,
        "admin request"
    );
    if matches!(op, "export" | "backup" | "verify") {
        let _ = tokio::task::spawn_blocking(crate::process::release_free_memory).await;
    }
}

/// The client's end: a connection to a running daemon's control socket.
#[derive(Debug)]
pub struct ControlConnection {
    stream: UnixStream,
    path: PathBuf,
}

/// Connects to the daemon serving `data_dir`. `Ok(None)` if no daemon listens there (no
/// socket, or a stale one); an error if one answers but is not this user's.
pub async fn connect(data_dir: &Path) -> Result<Option<ControlConnection>, AdminError> {
    let path = data_dir.join(SOCKET_FILE);
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(source) => return Err(AdminError::Control { path, source }),
    };
    let peer = peer_uid(&stream).map_err(|source| AdminError::Control {
        path: path.clone(),
        source,
    })?;
    if peer != own_uid() {
        return Err(AdminError::ControlProtocol {
            path,
            reason: format!("served by uid {peer}, not by this user; refusing to use it"),
        });
    }
    Ok(Some(ControlConnection { stream, path }))
}

impl ControlConnection {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and returns the daemon's reply (its error as
    /// [`AdminError::Remote`]).
    pub async fn ask(mut self, request: &Request) -> Result<Reply, AdminError> {
        let path = self.path.clone();
        let protocol = |reason: String| AdminError::ControlProtocol {
            path: path.clone(),
            reason,
        };
        write_line(&mut self.stream, request, WRITE_TIMEOUT)
            .await
            .map_err(&protocol)?;
        let line = read_line(&mut self.stream, MAX_RESPONSE_BYTES, RESPONSE_TIMEOUT)
            .await
            .map_err(&protocol)?
            .ok_or_else(|| protocol("the daemon closed the connection without answering".into()))?;
        match parse_response(&line).map_err(&protocol)? {
            Response::Stream(_) => Err(protocol("a streamed answer to a plain request".into())),
            answered => answered.into_reply(),
        }
    }

    /// Sends one streamed request ([`Request::is_streamed`]) and writes the bytes of the
    /// answer to `out` as they arrive, one frame at a time; returns the reply that follows
    /// them. Blocking (std I/O on the same socket, with [`RESPONSE_TIMEOUT`] on each read).
    pub fn ask_streamed(
        self,
        request: &Request,
        out: &mut dyn std::io::Write,
    ) -> Result<Reply, AdminError> {
        use std::io::{BufRead as _, Read as _, Write as _};
        let path = self.path.clone();
        let protocol = |reason: String| AdminError::ControlProtocol {
            path: path.clone(),
            reason,
        };
        let io = |error: std::io::Error| protocol(error.to_string());
        let stream = self.stream.into_std().map_err(io)?;
        stream.set_nonblocking(false).map_err(io)?;
        stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(io)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io)?;
        (&stream)
            .write_all(&json_line(request).map_err(&protocol)?)
            .map_err(io)?;
        let mut reader = std::io::BufReader::new(stream);
        let read_line = |reader: &mut std::io::BufReader<std::os::unix::net::UnixStream>,
                         what: &str|
         -> Result<Response, AdminError> {
            let mut line = Zeroizing::new(Vec::new());
            reader
                .take(MAX_STREAM_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(io)?;
            if line.pop() != Some(b'\n') {
                return Err(protocol(format!("no complete {what} line")));
            }
            parse_response(&line).map_err(&protocol)
        };
        match read_line(&mut reader, "header")? {
            Response::Stream(_) => {}
            Response::Ok(_) => return Err(protocol("a plain answer to a streamed request".into())),
            refused => return refused.into_reply(),
        }
        let mut frame = Zeroizing::new(Vec::new());
        loop {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len).map_err(io)?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                break;
            }
            if len > MAX_FRAME_BYTES {
                return Err(protocol(format!(
                    "a frame of {len} bytes; the limit is {MAX_FRAME_BYTES}"
                )));
            }
            frame.resize(len, 0);
            reader.read_exact(&mut frame).map_err(io)?;
            out.write_all(&frame).map_err(AdminError::Output)?;
        }
        match read_line(&mut reader, "reply")? {
            Response::Stream(_) => Err(protocol("a second stream header".into())),
            answered => answered.into_reply(),
        }
    }
}

/// Parses a response line.
fn parse_response(line: &[u8]) -> Result<Response, String> {
    serde_json::from_slice::<Response>(line).map_err(|e| format!("unreadable answer: {e}"))
}

impl Response {
    /// The reply, or the daemon's error or refusal as an [`AdminError`] (a stream header
    /// where none belongs is an error too).
    fn into_reply(self) -> Result<Reply, AdminError> {
        match self {
            Response::Ok(reply) => Ok(*reply),
            Response::Error(message) => Err(AdminError::Remote(message)),
            Response::Refused { kind, message } => Err(AdminError::RemoteRefusal { kind, message }),
            Response::Stream(_) => Err(AdminError::Remote("an unexpected stream".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    use crate::store::Store;
    use crate::test_support::runtime;

    /// A registry with one cluster of one member, to serve on its control socket.
    fn served_registry(dir: &Path) -> (Store, Arc<Registry>) {
        let (store, identity) = super::super::test_registry(dir, &["a"]);
        let registry = Arc::new(Registry::new(Arc::new(store.clone()), identity).unwrap());
        (store, registry)
    }

    /// Asks a plain request of the daemon on `dir`.
    async fn ask(dir: &Path, request: &Request) -> Result<Reply, AdminError> {
        connect(dir).await.unwrap().unwrap().ask(request).await
    }

    /// Asks a streamed request of the daemon on `dir`, collecting the bytes.
    async fn ask_streamed(dir: &Path, request: Request) -> (Vec<u8>, Result<Reply, AdminError>) {
        let connection = connect(dir).await.unwrap().unwrap();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let reply = connection.ask_streamed(&request, &mut out);
            (out, reply)
        })
        .await
        .unwrap()
    }

    #[test]
    fn streamed_answers_are_the_bytes_an_offline_command_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, registry) = served_registry(dir.path());
        let mut offline_export = Vec::new();
        let counts =
            super::super::export::write(&store.view().unwrap(), &mut offline_export).unwrap();
        runtime().block_on(async {
            let server = ControlServer::start(registry).unwrap();
            let (bytes, reply) = ask_streamed(dir.path(), Request::Export).await;
            assert_eq!(reply.unwrap(), Reply::Exported(counts));
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                String::from_utf8(offline_export).unwrap()
            );

            let (bytes, reply) = ask_streamed(dir.path(), Request::Backup).await;
            let Reply::BackedUp(summary) = reply.unwrap() else {
                panic!("not a backup reply")
            };
            assert_eq!(summary.bytes, bytes.len());
            assert_eq!(
                (summary.nodes, summary.clusters, summary.members),
                (1, 1, 1)
            );
            let checked = super::super::backup::inspect(&bytes, Path::new("s")).unwrap();
            assert_eq!(checked, summary);

            // A plain request asked as a streamed one, and the reverse, are protocol errors,
            // not hangs.
            let (bytes, reply) = ask_streamed(dir.path(), Request::Info).await;
            assert!(bytes.is_empty());
            assert!(
                matches!(reply, Err(AdminError::ControlProtocol { .. })),
                "{reply:?}"
            );
            let reply = ask(dir.path(), &Request::Export).await;
            assert!(
                matches!(reply, Err(AdminError::ControlProtocol { .. })),
                "{reply:?}"
            );

            // A failure is the reply after the stream: a failed store exports nothing.
            store.health().fail("disk gone (test)");
            let (bytes, reply) = ask_streamed(dir.path(), Request::Export).await;
            assert!(bytes.is_empty());
            assert!(
                matches!(&reply, Err(AdminError::Remote(m)) if m.contains("disk gone")),
                "{reply:?}"
            );
            server.stop().await;
        });
    }

    /// A client that stops reading in the middle of a streamed export: the daemon stops
    /// writing it, drops its view, and goes on serving.
    #[test]
    fn a_client_that_goes_away_mid_stream_leaves_no_view_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (store, registry) = served_registry(dir.path());
        let key = crate::test_support::fixture_key(1)
            .public_key()
            .to_spki_der()
            .to_vec();
        // Far more than the frames in flight and the socket's buffers hold.
        for i in 0..3_000 {
            let node = crate::store::NewNode {
                id: None,
                name: format!("n{i}"),
                attrs: 0,
                comms_key: key.clone(),
                sig_key: key.clone(),
                endpoints: vec!["127.0.0.1:1".into()],
            };
            store.register_node(node, 1).unwrap();
        }
        runtime().block_on(async {
            let server = ControlServer::start(registry).unwrap();
            let mut stream = UnixStream::connect(server.path()).await.unwrap();
            stream.write_all(b"{\"op\":\"export\"}\n").await.unwrap();
            let mut start = [0u8; 4096];
            stream.read_exact(&mut start).await.unwrap();
            assert!(start.starts_with(b"{\"stream\":{}}\n"));
            assert_eq!(store.open_views(), 1);
            drop(stream);
            let until = Instant::now() + Duration::from_secs(10);
            while store.open_views() > 0 {
                assert!(Instant::now() < until, "the view outlived its client");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let info = ask(dir.path(), &Request::Info).await.unwrap();
            assert!(matches!(info, Reply::Info(i) if i.nodes == 3_001));
            server.stop().await;
        });
    }

    #[test]
    fn serves_requests_and_refuses_malformed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        runtime().block_on(async {
            // A stale socket file is replaced.
            let stale = std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET_FILE));
            drop(stale);
            let identity =
                crate::registry::RegistryIdentity::load_or_create(&store, None, None, 0).unwrap();
            let registry = Arc::new(Registry::new(Arc::new(store.clone()), identity).unwrap());
            let server = ControlServer::start(registry).unwrap();
            let mode = std::fs::metadata(server.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, SOCKET_MODE);
            assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".control")));

            let reply = ask(dir.path(), &Request::Info).await.unwrap();
            assert!(matches!(reply, Reply::Info(info) if info.nodes == 0));
            let error = connect(dir.path())
                .await
                .unwrap()
                .unwrap()
                .ask(&Request::Cluster {
                    cluster: "nope".into(),
                })
                .await
                .unwrap_err();
            assert_eq!(error.to_string(), "no such cluster: nope");

            // Garbage, an over-long line and silence each get an error, and the daemon
            // goes on serving.
            let ask_raw = |bytes: Vec<u8>| {
                let path = dir.path().join(SOCKET_FILE);
                async move {
                    let mut stream = UnixStream::connect(&path).await.unwrap();
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                    let mut answer = String::new();
                    let _ = stream.read_to_string(&mut answer).await;
                    answer
                }
            };
            assert!(ask_raw(b"{\"op\":\"drop-tables\"}\n".to_vec())
                .await
                .contains("bad control request"));
            // Exactly one byte too many, so the daemon reads it all (closing a Unix socket
            // with unread data resets the peer, which would lose the answer).
            let long = vec![b'x'; MAX_REQUEST_BYTES + 1];
            assert!(ask_raw(long).await.contains("longer than"));
            assert!(ask_raw(b"{\"op\":\"info\"}".to_vec())
                .await
                .contains("closed in the middle"));
            let still = connect(dir.path()).await.unwrap().unwrap();
            assert!(still.ask(&Request::Nodes).await.is_ok());

            server.stop().await;
            assert!(!dir.path().join(SOCKET_FILE).exists());
            assert!(connect(dir.path()).await.unwrap().is_none());
        });
    }
}
