//! The xlReg/2 server session: a deterministic state machine from frames in to frames out.
//!
//! This is the protocol core, in the manner of quinn-proto: it takes each received frame
//! payload, the store and the time, and returns a [`Step`] telling the glue what to do
//! (send this frame, after making the store durable or not; apply a write to the store and
//! come back with its result; close; or hold a GetCluster until the cluster changes). It owns
//! no socket and no clock, so every path is testable without the network and fuzzable.
//!
//! States: `AwaitHello` -> (hello) -> `Established` -> (Member) -> `Registered`; in
//! `Registered`, Create, Join and GetCluster may come in any order and number; Bye is
//! allowed after the hello and is answered with Ack, then the connection closes. Any error
//! is answered with an Error message, then the connection closes. Anything that fails to
//! authenticate (a bad hello, a forged, replayed or reordered frame) is not answered at all:
//! the connection is closed silently.

use std::sync::Arc;

use prost::Message as _;

use crate::crypto::HelloDecryptor;
use crate::handlers::get_cluster::{self, GetOutcome, Wait};
use crate::handlers::{self, Context, HandlerError, SessionState};
use crate::id::Id;
use crate::proto::{ErrCode, Tag, XlRegMsg};
use crate::session_crypto::{Role, ServerHandshake, SessionCipher, SALT_LEN};
use crate::store::{StoreError, Write, Written};
use crate::token::Scheme;

/// What the glue must do after feeding the session a frame.
#[derive(Debug)]
pub enum Step {
    /// Send `frame` (a whole frame payload). If `durable`, only once every store change made
    /// so far is on disk. If `close`, close the connection after sending. If `joined` is
    /// set, the named cluster gained or refreshed a member: wake whoever waits on it (after
    /// the change is durable).
    Send {
        /// The payload to send as one frame.
        frame: Vec<u8>,
        /// Wait for the store to be durable before sending.
        durable: bool,
        /// Close after sending.
        close: bool,
        /// The cluster a Join changed.
        joined: Option<Id>,
    },
    /// Apply `write` to the store and pass the result to [`ServerSession::on_written`]. The
    /// registry uses [`Store::write`](crate::store::Store::write), which batches concurrent
    /// writes and answers once the change is durable.
    Write(Write),
    /// Hold the reply until the cluster changes (call [`ServerSession::resume`] with
    /// `expired = false`) or `wait.wait_ms` pass (call it with `expired = true`).
    Wait(Wait),
    /// Close the connection without a word.
    Close,
}

/// How a session ended, for the one log line per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Still running.
    #[default]
    Open,
    /// The client said Bye.
    Bye,
    /// The registry sent an Error and closed.
    Refused(ErrCode),
    /// The handshake or a frame failed to authenticate, or a frame was malformed.
    Dropped,
}

/// What a session on either wire (xlReg/2 here, xlReg 1.9 in [`crate::legacy`]) has done,
/// for the one log line that ends it.
#[derive(Debug, Default)]
pub struct SessionReport {
    /// What the session established through the handlers (its node, its clusters).
    pub state: SessionState,
    /// Requests handled so far.
    pub requests: u32,
    /// The op of the latest request, `None` if it had no op or an unknown one.
    pub last_op: Option<Tag>,
    /// How the session ended (or `Open`).
    pub outcome: Outcome,
}

impl SessionReport {
    /// The node the session registered as, if any.
    pub fn node(&self) -> Option<&Id> {
        self.state.node.as_ref().map(|n| &n.id)
    }

    /// The cluster the session last joined, else created, if any.
    pub fn cluster(&self) -> Option<&Id> {
        self.state.joined.as_ref().or(self.state.created.as_ref())
    }
}

#[derive(Debug)]
enum Phase {
    AwaitHello,
    Established {
        cipher: SessionCipher,
        server_salt: [u8; SALT_LEN],
    },
    Closed,
}

/// One xlReg/2 connection's protocol state, on the registry side.
#[derive(Debug)]
pub struct ServerSession {
    decryptor: Arc<HelloDecryptor>,
    phase: Phase,
    waiting: Option<Wait>,
    /// A [`Step::Write`] was returned and its result has not come back yet.
    writing: bool,
    report: SessionReport,
}

impl ServerSession {
    /// A session awaiting its hello, decrypting with the registry's comms key.
    pub fn new(decryptor: Arc<HelloDecryptor>) -> ServerSession {
        ServerSession {
            decryptor,
            phase: Phase::AwaitHello,
            waiting: None,
            writing: false,
            report: SessionReport::default(),
        }
    }

    /// What the session has done so far, for its log line.
    pub fn report(&self) -> &SessionReport {
        &self.report
    }

    /// True once the handshake is done.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    /// Feeds one received frame payload.
    pub fn on_frame(&mut self, frame: &[u8], ctx: &mut Context<'_>) -> Step {
        if self.waiting.is_some() || self.writing {
            // The client spoke before its request was answered: lock-step is broken.
            return self.drop_connection();
        }
        match &mut self.phase {
            Phase::AwaitHello => match ServerHandshake::accept(&self.decryptor, frame) {
                Ok((reply, keys)) => {
                    self.phase = Phase::Established {
                        cipher: SessionCipher::new(&keys.key, Role::Server),
                        server_salt: keys.server_salt,
                    };
                    Step::Send {
                        frame: reply,
                        durable: false,
                        close: false,
                        joined: None,
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "hello refused");
                    self.drop_connection()
                }
            },
            Phase::Established { cipher, .. } => {
                let Ok(plaintext) = cipher.open(frame) else {
                    return self.drop_connection();
                };
                match XlRegMsg::decode(plaintext.as_slice()) {
                    Ok(msg) => self.on_message(&msg, ctx),
                    Err(_) => self.refuse(
                        ErrCode::BadRequest,
                        "message is not a valid XLRegMsg".to_string(),
                    ),
                }
            }
            Phase::Closed => Step::Close,
        }
    }

    /// Re-answers a held GetCluster: after the cluster changed (`expired` false) or when the
    /// wait is over (`expired` true).
    pub fn resume(&mut self, ctx: &mut Context<'_>, expired: bool) -> Step {
        let Some(wait) = self.waiting.take() else {
            return Step::Close;
        };
        let outcome = get_cluster::resume(ctx, &wait, expired);
        self.get_outcome(outcome)
    }

    /// [`on_frame`](Self::on_frame), applying a write it asks for at once through
    /// `ctx.store` ([`Store::apply`](crate::store::Store::apply): unbatched, not yet durable):
    /// for tests, fuzzing and tools that drive the session without the glue.
    pub fn on_frame_applying(&mut self, frame: &[u8], ctx: &mut Context<'_>) -> Step {
        match self.on_frame(frame, ctx) {
            Step::Write(write) => {
                let result = ctx.store.apply_now(&write);
                self.on_written(result)
            }
            step => step,
        }
    }

    /// Takes the result of the [`Step::Write`] returned last and says what to send.
    pub fn on_written(&mut self, result: Result<Written, StoreError>) -> Step {
        if !std::mem::take(&mut self.writing) {
            return self.drop_connection();
        }
        match result {
            Ok(written) => {
                let reply = handlers::finish(&mut self.report.state, written);
                Step::Send {
                    frame: self.seal(&reply.msg),
                    // The store answers a write only once it (and all it read) is durable.
                    durable: false,
                    close: false,
                    joined: reply.joined,
                }
            }
            Err(error) => self.handler_error(HandlerError::from(error)),
        }
    }

    fn on_message(&mut self, msg: &XlRegMsg, ctx: &mut Context<'_>) -> Step {
        self.report.requests += 1;
        self.report.last_op = msg.op.and_then(|op| Tag::try_from(op).ok());
        let Some(op) = msg.op else {
            return self.refuse(ErrCode::BadRequest, "message has no Op".to_string());
        };
        let Ok(tag) = Tag::try_from(op) else {
            return self.refuse(ErrCode::BadRequest, format!("unknown Op {op}"));
        };
        let registered = self.report.state.node.is_some();
        let server_salt = match &self.phase {
            Phase::Established { server_salt, .. } => *server_salt,
            _ => return Step::Close,
        };
        match tag {
            Tag::Bye => {
                self.report.outcome = Outcome::Bye;
                let frame = self.seal(&handlers::bye::handle());
                self.phase = Phase::Closed;
                Step::Send {
                    frame,
                    durable: false,
                    close: true,
                    joined: None,
                }
            }
            Tag::Member if !registered => {
                let scheme = Scheme::V2 {
                    server_salt: &server_salt,
                };
                self.write(handlers::member::prepare(msg, scheme, ctx.now_ms))
            }
            Tag::Create if registered => self.write(handlers::create::prepare(msg, ctx.now_ms)),
            Tag::Join if registered => {
                self.write(handlers::join::prepare(&self.report.state, msg, ctx.now_ms))
            }
            Tag::GetCluster if registered => {
                let outcome = get_cluster::handle(ctx, &self.report.state, msg);
                self.get_outcome(outcome)
            }
            Tag::Member | Tag::Create | Tag::Join | Tag::GetCluster => {
                let why = if registered {
                    "Member was already sent in this session"
                } else {
                    "send Member first"
                };
                self.refuse(
                    ErrCode::InvalidState,
                    format!("{} is not allowed now: {why}", tag.as_str_name()),
                )
            }
            Tag::RegCredRequest => self.refuse(
                ErrCode::BadRequest,
                "RegCredRequest is not supported; read regCred.dat".to_string(),
            ),
            Tag::RegCredReply
            | Tag::MemberOk
            | Tag::CreateReply
            | Tag::JoinReply
            | Tag::ClusterMembers
            | Tag::Ack
            | Tag::Error => self.refuse(
                ErrCode::BadRequest,
                format!("{} is a registry reply, not a request", tag.as_str_name()),
            ),
        }
    }

    fn get_outcome(&mut self, outcome: Result<GetOutcome, HandlerError>) -> Step {
        match outcome {
            Ok(GetOutcome::Ready(msg)) => Step::Send {
                frame: self.seal(&msg),
                // Never show a member whose join is not yet on disk.
                durable: true,
                close: false,
                joined: None,
            },
            Ok(GetOutcome::Wait(wait)) => {
                self.waiting = Some(wait.clone());
                Step::Wait(wait)
            }
            Err(error) => self.handler_error(error),
        }
    }

    fn write(&mut self, prepared: Result<Write, HandlerError>) -> Step {
        match prepared {
            Ok(write) => {
                self.writing = true;
                Step::Write(write)
            }
            Err(error) => self.handler_error(error),
        }
    }

    fn handler_error(&mut self, error: HandlerError) -> Step {
        let (code, description) = error.refusal();
        self.refuse(code, description)
    }

    fn refuse(&mut self, code: ErrCode, description: String) -> Step {
        self.report.outcome = Outcome::Refused(code);
        let frame = self.seal(&handlers::error_message(code, description));
        self.phase = Phase::Closed;
        Step::Send {
            frame,
            durable: false,
            close: true,
            joined: None,
        }
    }

    fn drop_connection(&mut self) -> Step {
        self.report.outcome = Outcome::Dropped;
        self.phase = Phase::Closed;
        Step::Close
    }

    fn seal(&mut self, msg: &XlRegMsg) -> Vec<u8> {
        match &mut self.phase {
            Phase::Established { cipher, .. } => cipher.seal(&msg.encode_to_vec()),
            // Only reachable by a logic error; an empty frame fails the peer's authentication.
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The state machine driven directly, without sockets or clocks.

    use super::*;
    use crate::crypto::RsaKeyPair;
    use crate::handlers::testing::{member_msg_for, with_ctx};
    use crate::session_crypto::{ClientHandshake, SessionKeys};
    use crate::store::Store;
    use std::sync::OnceLock;

    fn registry_key() -> &'static RsaKeyPair {
        static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
        KEY.get_or_init(|| RsaKeyPair::generate(2048).unwrap())
    }

    struct Peer {
        cipher: SessionCipher,
        keys: SessionKeys,
    }

    fn sent(step: Step) -> (Vec<u8>, bool) {
        match step {
            Step::Send { frame, close, .. } => (frame, close),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn feed(store: &Store, session: &mut ServerSession, frame: &[u8]) -> Step {
        with_ctx(store, |ctx| session.on_frame_applying(frame, ctx))
    }

    fn connect(store: &Store) -> (ServerSession, Peer) {
        let mut session = ServerSession::new(Arc::new(registry_key().hello_decryptor().unwrap()));
        let (client, hello) = ClientHandshake::start(registry_key().public_key()).unwrap();
        let (reply, _) = sent(with_ctx(store, |ctx| session.on_frame(&hello, ctx)));
        let keys = client.finish(&reply).unwrap();
        let cipher = SessionCipher::new(&keys.key, Role::Client);
        assert!(session.is_established());
        (session, Peer { cipher, keys })
    }

    fn request(
        store: &Store,
        session: &mut ServerSession,
        peer: &mut Peer,
        msg: &XlRegMsg,
    ) -> (XlRegMsg, bool) {
        let frame = peer.cipher.seal(&msg.encode_to_vec());
        let (reply, close) = sent(feed(store, session, &frame));
        let plaintext = peer.cipher.open(&reply).unwrap();
        (XlRegMsg::decode(plaintext.as_slice()).unwrap(), close)
    }

    fn member(peer: &Peer) -> XlRegMsg {
        member_msg_for(&peer.keys.server_salt, 0, "m", None, &["127.0.0.1:9"])
    }

    fn op(tag: Tag) -> XlRegMsg {
        XlRegMsg {
            op: Some(tag as i32),
            ..XlRegMsg::default()
        }
    }

    #[test]
    fn a_whole_session_without_sockets() {
        let store = Store::temporary().unwrap();
        let (mut session, mut peer) = connect(&store);
        let member = member(&peer);
        let (reply, close) = request(&store, &mut session, &mut peer, &member);
        assert_eq!((reply.op, close), (Some(Tag::MemberOk as i32), false));
        let create = XlRegMsg {
            cluster_name: Some("c".into()),
            cluster_max_size: Some(2),
            ..op(Tag::Create)
        };
        let (reply, _) = request(&store, &mut session, &mut peer, &create);
        assert_eq!(reply.op, Some(Tag::CreateReply as i32));
        let (reply, _) = request(&store, &mut session, &mut peer, &op(Tag::Join));
        assert_eq!(reply.slot, Some(0));
        let wait = XlRegMsg {
            wait_ms: Some(1_000),
            ..op(Tag::GetCluster)
        };
        let frame = peer.cipher.seal(&wait.encode_to_vec());
        let step = with_ctx(&store, |ctx| session.on_frame(&frame, ctx));
        assert!(matches!(step, Step::Wait(ref w) if w.which == 0b11 && w.wait_ms == 1_000));
        let (reply, _) = sent(with_ctx(&store, |ctx| session.resume(ctx, true)));
        let reply = XlRegMsg::decode(peer.cipher.open(&reply).unwrap().as_slice()).unwrap();
        assert_eq!(reply.which, Some(0b01));
        let (reply, close) = request(&store, &mut session, &mut peer, &op(Tag::Bye));
        assert_eq!((reply.op, close), (Some(Tag::Ack as i32), true));
        assert_eq!(session.report().outcome, Outcome::Bye);
        // Anything after Bye is not answered.
        let late = peer.cipher.seal(&op(Tag::Bye).encode_to_vec());
        assert!(matches!(
            with_ctx(&store, |ctx| session.on_frame(&late, ctx)),
            Step::Close
        ));
    }

    #[test]
    fn a_write_is_handed_to_the_glue_and_its_result_becomes_the_reply() {
        let store = Store::temporary().unwrap();
        let (mut session, mut peer) = connect(&store);
        let frame = peer.cipher.seal(&member(&peer).encode_to_vec());
        let step = with_ctx(&store, |ctx| session.on_frame(&frame, ctx));
        let Step::Write(write) = step else {
            panic!("Member should ask for a write, got {step:?}")
        };
        assert!(
            matches!(write, Write::RegisterNode { ref node, now_ms: 1_000 } if node.name == "m")
        );
        // Nothing is stored until the glue applies the write.
        assert_eq!(store.counts().unwrap().nodes, 0);
        // The client may not speak before it is answered.
        let early = peer.cipher.seal(&op(Tag::Bye).encode_to_vec());
        assert!(matches!(
            with_ctx(&store, |ctx| session.on_frame(&early, ctx)),
            Step::Close
        ));
        assert_eq!(session.report().outcome, Outcome::Dropped);

        // A refusal from the store (here a full cluster) is an Error reply, then the close.
        let (mut session, mut peer) = connect(&store);
        let frame = peer.cipher.seal(&member(&peer).encode_to_vec());
        let Step::Write(_) = with_ctx(&store, |ctx| session.on_frame(&frame, ctx)) else {
            panic!("no write")
        };
        let full = crate::store::Refusal::ClusterFull {
            name: "c".into(),
            members: 2,
            max: 2,
        };
        let (reply, close) = sent(session.on_written(Err(StoreError::Refused(full))));
        let reply = XlRegMsg::decode(peer.cipher.open(&reply).unwrap().as_slice()).unwrap();
        assert_eq!(reply.err_kind, Some(ErrCode::ClusterFull as i32));
        assert!(close);
        // A result nobody asked for is not answered.
        let (mut session, _) = connect(&store);
        assert!(matches!(
            session.on_written(Err(StoreError::Refused(crate::store::Refusal::NoSuchNode(
                Id::random(&mut rand::rng())
            )))),
            Step::Close
        ));
    }

    #[test]
    fn requests_in_the_wrong_state_or_from_the_server_side_are_errors() {
        let store = Store::temporary().unwrap();
        for (tag, code) in [
            (Tag::Create, ErrCode::InvalidState),
            (Tag::Join, ErrCode::InvalidState),
            (Tag::GetCluster, ErrCode::InvalidState),
            (Tag::Ack, ErrCode::BadRequest),
            (Tag::Error, ErrCode::BadRequest),
            (Tag::RegCredRequest, ErrCode::BadRequest),
        ] {
            let (mut session, mut peer) = connect(&store);
            let (reply, close) = request(&store, &mut session, &mut peer, &op(tag));
            assert_eq!(reply.op, Some(Tag::Error as i32));
            assert_eq!(reply.err_kind, Some(code as i32), "{tag:?}");
            assert!(close);
        }
        let (mut session, mut peer) = connect(&store);
        let (reply, _) = request(&store, &mut session, &mut peer, &XlRegMsg::default());
        assert_eq!(reply.err_desc.as_deref(), Some("message has no Op"));
    }

    #[test]
    fn unauthentic_frames_close_silently() {
        let store = Store::temporary().unwrap();
        let (mut session, mut peer) = connect(&store);
        let frame = peer.cipher.seal(&member(&peer).encode_to_vec());
        let mut flipped = frame.clone();
        flipped[3] ^= 0x40;
        assert!(matches!(
            with_ctx(&store, |ctx| session.on_frame(&flipped, ctx)),
            Step::Close
        ));
        assert_eq!(session.report().outcome, Outcome::Dropped);
        // A fresh session: a replay of its first frame fails the second time.
        let (mut session, mut peer) = connect(&store);
        let frame = peer.cipher.seal(&member(&peer).encode_to_vec());
        assert!(matches!(
            feed(&store, &mut session, &frame),
            Step::Send { .. }
        ));
        assert!(matches!(
            with_ctx(&store, |ctx| session.on_frame(&frame, ctx)),
            Step::Close
        ));
        // Garbage instead of a hello.
        let mut session = ServerSession::new(Arc::new(registry_key().hello_decryptor().unwrap()));
        assert!(matches!(
            with_ctx(&store, |ctx| session.on_frame(&[0u8; 256], ctx)),
            Step::Close
        ));
        assert_eq!(store.counts().unwrap().nodes, 1);
    }
}
