//! The xlReg/2 and xlReg/3 server session core: a deterministic state machine from bytes in
//! to steps out.
//!
//! This is the protocol core, in the manner of quinn-proto: it implements
//! [`SessionCore`], taking the bytes received, the results of the store reads and writes it
//! asks for, and the time, and handing back [`Step`]s for the driver ([`crate::driver`]) to
//! carry out. It owns no socket, no clock, no store handle and no global randomness (the
//! handshake's key and salt come from the RNG it is given), so every path — the handshake
//! and idle deadlines and a held GetCluster included — is testable without the network and
//! fuzzable. The length-prefixed framing (`frame`) is done here: frames in, whole frames out.
//!
//! Both versions share one listener and one core: the first frame says which a client speaks
//! (an xlReg/3 first message is exactly 1,140 bytes opening with `XLR3`; an xlReg/2 hello is
//! an RSA ciphertext of the comms key's modulus length, 256 to 512 bytes). Version 3 is served
//! only when the registry has handshake keys ([`ServerSession::with_v3`]). After the
//! handshake the versions differ only in the frame cipher and in what member token
//! signatures are bound to (xlReg/2: the registry's salt; xlReg/3: the handshake hash).
//!
//! States: `AwaitHello` -> (hello) -> `Established` -> (Member) -> `Registered`; in
//! `Registered`, Create, Join and GetCluster may come in any order and number; Bye is
//! allowed after the hello and is answered with Ack, then the connection closes. Any error
//! is answered with an Error message, then the connection closes. Anything that fails to
//! authenticate (a bad hello, a forged, replayed or reordered frame) is not answered at all:
//! the connection is closed silently, and so is a client that speaks while its request is
//! being answered (lock-step). A hello not whole within the handshake timeout, or a request
//! not whole within the idle timeout after the previous reply, closes the session silently.

use std::sync::Arc;

use prost::Message as _;
use rand::rngs::StdRng;

use crate::crypto::{HandshakeKeyPair, HelloDecryptor};
use crate::frame::{self, FrameDecoder, FrameError};
use crate::handlers::{self, get_cluster, HandlerError};
use crate::model::{StoreError, Write, Written};
use crate::proto::{ErrCode, Tag, XlRegMsg};
use crate::session::{
    Exchange, Millis, Outcome, ReadResult, SessionCore, SessionReport, Step, Timeouts,
};
use crate::session_crypto::{
    is_v3_hello, Role, ServerHandshake, ServerHandshakeV3, SessionCipher, WireCipher,
};
use crate::token::Scheme;

#[derive(Debug)]
enum Phase {
    AwaitHello,
    Established {
        cipher: WireCipher,
        /// What member token signatures are bound to: the registry's salt (xlReg/2) or the
        /// handshake hash (xlReg/3).
        binding: Vec<u8>,
    },
}

/// One xlReg/2 or xlReg/3 connection's protocol state, on the registry side.
#[derive(Debug)]
pub struct ServerSession {
    decryptor: Arc<HelloDecryptor>,
    handshake_keys: Option<Arc<HandshakeKeyPair>>,
    /// The set rotated away from, during a rotation's overlap.
    previous_handshake_keys: Option<Arc<HandshakeKeyPair>>,
    rng: StdRng,
    decoder: FrameDecoder,
    phase: Phase,
    exchange: Exchange,
    /// The regCred.dat text a regCred fetch is answered with, if the registry serves it.
    regcred: Option<Arc<str>>,
}

/// The first frame of a regCred fetch (docs/protocol.md section 14.10): `"XLRC" || 1`
/// (u32). No hello has this length (256..512 or 1,140 bytes).
pub const REGCRED_FETCH: &[u8; 8] = b"XLRC\0\0\0\x01";

impl ServerSession {
    /// A session starting at `now`, awaiting its hello: decrypts with the registry's comms
    /// key, draws its handshake key and salt from `rng`, accepts frames of at most
    /// `max_frame` bytes and gives the peer `timeouts` to speak.
    pub fn new(
        decryptor: Arc<HelloDecryptor>,
        rng: StdRng,
        max_frame: usize,
        timeouts: Timeouts,
        now: Millis,
    ) -> ServerSession {
        ServerSession {
            decryptor,
            handshake_keys: None,
            previous_handshake_keys: None,
            rng,
            decoder: FrameDecoder::new(max_frame),
            phase: Phase::AwaitHello,
            exchange: Exchange::new(timeouts, now),
            regcred: None,
        }
    }

    /// Answers a regCred fetch with `text` (the published regCred.dat).
    pub fn with_regcred(mut self, text: Arc<str>) -> ServerSession {
        self.regcred = Some(text);
        self
    }

    /// Also serves xlReg/3 with the registry's static handshake `keys`.
    pub fn with_v3(mut self, keys: Arc<HandshakeKeyPair>) -> ServerSession {
        self.handshake_keys = Some(keys);
        self
    }

    /// Also accepts xlReg/3 first messages made to the registry's previous static `keys`
    /// (during a key rotation's overlap); they are tried after the current set.
    pub fn with_previous_v3(mut self, keys: Arc<HandshakeKeyPair>) -> ServerSession {
        self.previous_handshake_keys = Some(keys);
        self
    }

    /// The protocol version of the session, once its handshake is done.
    pub fn version(&self) -> Option<u32> {
        match &self.phase {
            Phase::AwaitHello => None,
            Phase::Established { cipher, .. } => Some(cipher.version()),
        }
    }

    /// The handshake of either version: the reply and the established phase, or `None`
    /// if the first frame is refused.
    fn handshake(&mut self, frame: &[u8]) -> Option<(Vec<u8>, Phase)> {
        if let Some(keys) = self.handshake_keys.as_ref().filter(|_| is_v3_hello(frame)) {
            let key_sets: Vec<&HandshakeKeyPair> = std::iter::once(&**keys)
                .chain(self.previous_handshake_keys.as_deref())
                .collect();
            return match ServerHandshakeV3::accept_any(&key_sets, frame, &mut self.rng) {
                Ok((reply, session)) => Some((
                    reply,
                    Phase::Established {
                        cipher: WireCipher::V3(session.cipher),
                        binding: session.handshake_hash.to_vec(),
                    },
                )),
                Err(error) => {
                    tracing::debug!(%error, "xlReg/3 first message refused");
                    None
                }
            };
        }
        match ServerHandshake::accept(&self.decryptor, frame, &mut self.rng) {
            Ok((reply, keys)) => Some((
                reply,
                Phase::Established {
                    cipher: WireCipher::V2(SessionCipher::new(&keys.key, Role::Server)),
                    binding: keys.server_salt.to_vec(),
                },
            )),
            Err(error) => {
                tracing::debug!(%error, "hello refused");
                None
            }
        }
    }

    /// The next whole frame received, if any; a frame over the limit ends the session.
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        match self.decoder.next_frame() {
            Ok(frame) => frame,
            Err(FrameError::TooLarge { len, max }) => {
                self.exchange.report.outcome = Outcome::FrameTooLarge { len, max };
                self.exchange.close();
                None
            }
        }
    }

    fn on_frame(&mut self, frame: &[u8], now: Millis) -> Step {
        match &mut self.phase {
            Phase::AwaitHello if frame == REGCRED_FETCH && self.regcred.is_some() => {
                // Unauthenticated by design: the client checks the text against its pin.
                let text = self.regcred.clone().unwrap_or_default();
                self.exchange.report.outcome = Outcome::CredentialsSent;
                self.exchange.close();
                Step::Send {
                    bytes: frame::encode(text.as_bytes()),
                    durable: false,
                    close: true,
                }
            }
            Phase::AwaitHello => match self.handshake(frame) {
                Some((reply, phase)) => {
                    if let Phase::Established { binding, .. } = &phase {
                        self.exchange.report.state.binding = binding.clone();
                    }
                    self.phase = phase;
                    self.exchange.report.version = self.version();
                    self.exchange.reply(frame::encode(&reply), false, now)
                }
                None => self.drop_connection(),
            },
            Phase::Established { cipher, .. } => {
                let Ok(plaintext) = cipher.open(frame) else {
                    return self.drop_connection();
                };
                match XlRegMsg::decode(plaintext.as_slice()) {
                    Ok(msg) => self.on_message(&msg, now),
                    Err(_) => self.refuse(
                        ErrCode::BadRequest,
                        "message is not a valid XLRegMsg".to_string(),
                    ),
                }
            }
        }
    }

    fn on_message(&mut self, msg: &XlRegMsg, now: Millis) -> Step {
        self.exchange
            .request(msg.op.and_then(|op| Tag::try_from(op).ok()));
        let Some(op) = msg.op else {
            return self.refuse(ErrCode::BadRequest, "message has no Op".to_string());
        };
        let Ok(tag) = Tag::try_from(op) else {
            return self.refuse(ErrCode::BadRequest, format!("unknown Op {op}"));
        };
        let state = &self.exchange.report.state;
        let registered = state.node.is_some();
        let Phase::Established { binding, .. } = &self.phase else {
            return self.drop_connection();
        };
        match tag {
            Tag::Bye => {
                let phase = &mut self.phase;
                self.exchange.last_word(
                    &handlers::bye::handle(),
                    Outcome::Bye,
                    &mut |msg: &XlRegMsg| seal(phase, msg),
                )
            }
            Tag::Member if !registered => {
                // xlReg/3 binds the token to the handshake hash in the salt's place.
                let scheme = Scheme::V2 {
                    server_salt: binding,
                };
                let prepared = handlers::member::prepare(msg, scheme, now);
                self.write(prepared)
            }
            Tag::Create if registered => self.write(handlers::create::prepare(state, msg, now)),
            Tag::Join if registered => {
                let prepared = handlers::join::prepare(state, msg, now);
                self.write(prepared)
            }
            Tag::GetCluster if registered || get_cluster::has_proof(msg) => {
                match get_cluster::request(state, msg, now) {
                    Ok(request) => self.exchange.read(request),
                    Err(error) => self.handler_error(error),
                }
            }
            Tag::ListTokens => match get_cluster::list_tokens(state, msg, now) {
                Ok(request) => self.exchange.read(request),
                Err(error) => self.handler_error(error),
            },
            Tag::MintToken => self.write(handlers::tokens::mint(state, msg, now)),
            Tag::RevokeToken => self.write(handlers::tokens::revoke(state, msg, now)),
            Tag::Evict => self.write(handlers::evict::prepare(state, msg, now)),
            Tag::CloseCluster => self.write(handlers::close::prepare(state, msg, now)),
            Tag::DeleteCluster => self.write(handlers::delete::prepare(state, msg, now)),
            Tag::Leave if registered => self.write(handlers::leave::prepare(state, msg)),
            Tag::Member | Tag::Create | Tag::Join | Tag::GetCluster | Tag::Leave => {
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
            | Tag::TokenList
            | Tag::Done
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

    fn write(&mut self, prepared: Result<Write, HandlerError>) -> Step {
        match prepared {
            Ok(write) => self.exchange.write(write),
            Err(error) => self.handler_error(error),
        }
    }

    fn handler_error(&mut self, error: HandlerError) -> Step {
        let phase = &mut self.phase;
        self.exchange
            .handler_error(error, &mut |msg: &XlRegMsg| seal(phase, msg))
    }

    fn refuse(&mut self, code: ErrCode, description: String) -> Step {
        let phase = &mut self.phase;
        self.exchange
            .refuse(code, description, &mut |msg: &XlRegMsg| seal(phase, msg))
    }

    fn drop_connection(&mut self) -> Step {
        self.exchange.drop_session();
        Step::Close
    }
}

/// Seals `msg` as a whole frame under the session's cipher.
fn seal(phase: &mut Phase, msg: &XlRegMsg) -> Vec<u8> {
    match phase {
        Phase::Established { cipher, .. } => frame::encode(&cipher.seal(&msg.encode_to_vec())),
        // Only reachable by a logic error; an empty frame fails the peer's authentication.
        Phase::AwaitHello => frame::encode(&[]),
    }
}

impl SessionCore for ServerSession {
    fn on_bytes(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
    }

    fn poll(&mut self, now: Millis) -> Option<Step> {
        if let Some(step) = self.exchange.take_next() {
            return Some(step);
        }
        if self.exchange.is_closed() {
            return Some(Step::Close);
        }
        if self.exchange.is_holding() {
            // In lock-step the client says nothing while its reply is held: a frame now
            // breaks the session.
            return match self.next_frame() {
                Some(_) => Some(self.drop_connection()),
                None if self.exchange.is_closed() => Some(Step::Close),
                None => None,
            };
        }
        if !self.exchange.may_take_request() {
            return None;
        }
        match self.next_frame() {
            Some(frame) => Some(self.on_frame(&frame, now)),
            None if self.exchange.is_closed() => Some(Step::Close),
            None => None,
        }
    }

    fn on_read(&mut self, result: ReadResult, now: Millis) {
        let phase = &mut self.phase;
        self.exchange
            .on_read(result, now, &mut |msg: &XlRegMsg| seal(phase, msg));
    }

    fn on_written(&mut self, result: Result<Written, StoreError>, now: Millis) {
        let phase = &mut self.phase;
        self.exchange
            .on_written(result, now, &mut |msg: &XlRegMsg| seal(phase, msg));
    }

    fn on_changed(&mut self) {
        self.exchange.changed();
    }

    fn poll_timeout(&self) -> Option<Millis> {
        self.exchange.poll_timeout()
    }

    fn on_timeout(&mut self, now: Millis) {
        if self.exchange.timed_out(now) {
            let established = self.is_established();
            self.exchange.time_out(established);
        }
    }

    fn on_shutdown(&mut self) {
        self.exchange.expire_wait();
    }

    fn is_idle(&self) -> bool {
        self.exchange.is_idle(self.decoder.buffered())
    }

    fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    fn report(&self) -> &SessionReport {
        &self.exchange.report
    }
}

#[cfg(test)]
mod tests {
    //! The state machine driven directly, without sockets or clocks.

    use super::*;
    use crate::crypto::RsaKeyPair;
    use crate::driver::poll_applying;
    use crate::handlers::testing::member_msg_for;
    use crate::id::Id;
    use crate::model::Refusal;
    use crate::session::Read;
    use crate::session_crypto::{ClientHandshake, SessionKeys};
    use crate::store::Store;
    use rand::SeedableRng as _;
    use std::sync::OnceLock;

    const NOW: Millis = 1_000;
    const TIMEOUTS: Timeouts = Timeouts {
        handshake_ms: 10_000,
        idle_ms: 60_000,
    };

    fn registry_key() -> &'static RsaKeyPair {
        static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
        KEY.get_or_init(|| crate::test_support::fixture_key(31))
    }

    fn new_session() -> ServerSession {
        ServerSession::new(
            Arc::new(registry_key().hello_decryptor().unwrap()),
            StdRng::seed_from_u64(7),
            64 * 1024,
            TIMEOUTS,
            NOW,
        )
    }

    struct Peer {
        cipher: SessionCipher,
        keys: SessionKeys,
    }

    /// The frame payload of a reply, and whether the session closes after it.
    fn sent(step: Option<Step>) -> (Vec<u8>, bool) {
        match step {
            Some(Step::Send { bytes, close, .. }) => {
                let mut decoder = FrameDecoder::new(frame::MAX_FRAME_LEN);
                decoder.push(&bytes);
                (decoder.next_frame().unwrap().unwrap(), close)
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn feed(store: &Store, session: &mut ServerSession, payload: &[u8]) -> Option<Step> {
        session.on_bytes(&frame::encode(payload));
        poll_applying(session, store, NOW)
    }

    fn connect(store: &Store) -> (ServerSession, Peer) {
        let mut session = new_session();
        let (client, hello) = ClientHandshake::start(registry_key().public_key()).unwrap();
        let (reply, _) = sent(feed(store, &mut session, &hello));
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
        // Slot 1 is empty: the reply is held, the cluster watched, then read again.
        assert!(matches!(
            feed(&store, &mut session, &frame),
            Some(Step::Watch(_))
        ));
        assert!(poll_applying(&mut session, &store, NOW).is_none());
        assert_eq!(session.poll_timeout(), Some(NOW + 1_000));
        session.on_timeout(NOW + 1_000);
        let (reply, _) = sent(poll_applying(&mut session, &store, NOW + 1_000));
        let reply = XlRegMsg::decode(peer.cipher.open(&reply).unwrap().as_slice()).unwrap();
        assert_eq!(reply.which, Some(0b01));
        let (reply, close) = request(&store, &mut session, &mut peer, &op(Tag::Bye));
        assert_eq!((reply.op, close), (Some(Tag::Ack as i32), true));
        assert_eq!(session.report().outcome, Outcome::Bye);
        // Anything after Bye is not answered.
        let late = peer.cipher.seal(&op(Tag::Bye).encode_to_vec());
        assert!(matches!(
            feed(&store, &mut session, &late),
            Some(Step::Close)
        ));
    }

    #[test]
    fn a_write_is_handed_to_the_driver_and_its_result_becomes_the_reply() {
        let store = Store::temporary().unwrap();
        let (mut session, mut peer) = connect(&store);
        let frame = peer.cipher.seal(&member(&peer).encode_to_vec());
        session.on_bytes(&frame::encode(&frame));
        let step = session.poll(NOW);
        let Some(Step::Write(write)) = step else {
            panic!("Member should ask for a write, got {step:?}")
        };
        assert!(matches!(write, Write::RegisterNode { ref node, now_ms: NOW } if node.name == "m"));
        // Nothing is stored until the driver applies the write, and nothing more is taken
        // from the peer until it is answered.
        assert_eq!(store.counts().unwrap().nodes, 0);
        let early = peer.cipher.seal(&op(Tag::Bye).encode_to_vec());
        session.on_bytes(&frame::encode(&early));
        assert!(session.poll(NOW).is_none());
        // A result nobody asked for drops the session.
        session.on_read(Ok(None), NOW);
        assert!(matches!(session.poll(NOW), Some(Step::Close)));
        assert_eq!(session.report().outcome, Outcome::Dropped);

        // A refusal from the store (here a full cluster) is an Error reply, then the close.
        let (mut session, mut peer) = connect(&store);
        let frame = peer.cipher.seal(&member(&peer).encode_to_vec());
        session.on_bytes(&frame::encode(&frame));
        let Some(Step::Write(_)) = session.poll(NOW) else {
            panic!("no write")
        };
        let full = StoreError::Refused(Refusal::ClusterFull {
            name: "c".into(),
            members: 2,
            max: 2,
        });
        session.on_written(Err(full), NOW);
        let (reply, close) = sent(session.poll(NOW));
        let reply = XlRegMsg::decode(peer.cipher.open(&reply).unwrap().as_slice()).unwrap();
        assert_eq!(reply.err_kind, Some(ErrCode::ClusterFull as i32));
        assert!(close);
        // A second write result, after the first was answered, is not answered.
        let (mut session, _) = connect(&store);
        session.on_written(
            Err(StoreError::Refused(Refusal::NoSuchNode(Id::random(
                &mut rand::rng(),
            )))),
            NOW,
        );
        assert!(matches!(session.poll(NOW), Some(Step::Close)));
        assert_eq!(session.report().outcome, Outcome::Dropped);
    }

    #[test]
    fn owner_and_token_requests_need_no_member_but_join_and_leave_do() {
        use crate::model::admission::{list_proof_input, owner_proof_input, OwnerOp};
        let store = Store::temporary().unwrap();
        let owner = crate::model::admission::OwnerSecret::parse("abcdefghijklmnopqrstuvwxyz234567")
            .unwrap()
            .key();
        // An owner request before Member goes to the store (as a write), bound to the salt.
        let (mut session, peer) = connect(&store);
        let input = owner_proof_input(&peer.keys.server_salt, OwnerOp::Close, &[5; 32], b"", b"");
        let close = XlRegMsg {
            cluster_id: Some(vec![5; 32]),
            owner_sig: Some(owner.sign(&input).to_vec()),
            ..op(Tag::CloseCluster)
        };
        let mut peer = peer;
        let frame = peer.cipher.seal(&close.encode_to_vec());
        session.on_bytes(&frame::encode(&frame));
        let Some(Step::Write(Write::Owner { proof, .. })) = session.poll(NOW) else {
            panic!("CloseCluster should ask for a write")
        };
        assert_eq!(proof.binding, peer.keys.server_salt.to_vec());
        // A GetCluster with a list proof before Member asks for a guarded read.
        let (mut session, mut peer) = connect(&store);
        let tid = "abc123";
        let get = XlRegMsg {
            cluster_id: Some(vec![5; 32]),
            token_id: Some(tid.into()),
            token_proof: Some(
                owner
                    .sign(&list_proof_input(&peer.keys.server_salt, &[5; 32], tid))
                    .to_vec(),
            ),
            ..op(Tag::GetCluster)
        };
        let frame = peer.cipher.seal(&get.encode_to_vec());
        session.on_bytes(&frame::encode(&frame));
        assert!(matches!(
            session.poll(NOW),
            Some(Step::Read(Read::ClusterWithProof(_)))
        ));
        // Join and Leave before Member: InvalidState.
        for tag in [Tag::Join, Tag::Leave] {
            let (mut session, mut peer) = connect(&store);
            let (reply, close) = request(&store, &mut session, &mut peer, &op(tag));
            assert_eq!(
                reply.err_kind,
                Some(ErrCode::InvalidState as i32),
                "{tag:?}"
            );
            assert!(close);
        }
    }

    #[test]
    fn a_regcred_fetch_is_answered_only_when_the_registry_serves_one() {
        let store = Store::temporary().unwrap();
        let mut session = new_session().with_regcred("regCred {\n}\n".into());
        let (text, close) = sent(feed(&store, &mut session, REGCRED_FETCH));
        assert_eq!((text.as_slice(), close), (&b"regCred {\n}\n"[..], true));
        assert_eq!(session.report().outcome, Outcome::CredentialsSent);
        // Without the text to serve, the frame is a bad hello: closed without a word.
        let mut session = new_session();
        assert!(matches!(
            feed(&store, &mut session, REGCRED_FETCH),
            Some(Step::Close)
        ));
    }

    #[test]
    fn a_get_cluster_asks_for_a_read_and_answers_from_it() {
        let store = Store::temporary().unwrap();
        let (mut session, mut peer) = connect(&store);
        let member = member(&peer);
        request(&store, &mut session, &mut peer, &member);
        let get = XlRegMsg {
            cluster_name: Some("nope".into()),
            ..op(Tag::GetCluster)
        };
        let frame = peer.cipher.seal(&get.encode_to_vec());
        session.on_bytes(&frame::encode(&frame));
        let Some(Step::Read(read)) = session.poll(NOW) else {
            panic!("GetCluster should ask for a read")
        };
        assert_eq!(
            read,
            Read::Cluster(crate::store::ClusterRef::Name("nope".into()))
        );
        session.on_read(Ok(None), NOW);
        let (reply, close) = sent(session.poll(NOW));
        let reply = XlRegMsg::decode(peer.cipher.open(&reply).unwrap().as_slice()).unwrap();
        assert_eq!(reply.err_kind, Some(ErrCode::NotFound as i32));
        assert!(close);
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
            feed(&store, &mut session, &flipped),
            Some(Step::Close)
        ));
        assert_eq!(session.report().outcome, Outcome::Dropped);
        // A fresh session: a replay of its first frame fails the second time.
        let (mut session, mut peer) = connect(&store);
        let frame = peer.cipher.seal(&member(&peer).encode_to_vec());
        assert!(matches!(
            feed(&store, &mut session, &frame),
            Some(Step::Send { .. })
        ));
        assert!(matches!(
            feed(&store, &mut session, &frame),
            Some(Step::Close)
        ));
        // Garbage instead of a hello.
        let mut session = new_session();
        assert!(matches!(
            feed(&store, &mut session, &[0u8; 256]),
            Some(Step::Close)
        ));
        assert_eq!(store.counts().unwrap().nodes, 1);
    }

    mod v3 {
        //! xlReg/3 through the same core, next to xlReg/2.

        use super::*;
        use crate::crypto::HandshakeKeyPair;
        use crate::session_crypto::{ClientHandshakeV3, NoiseCipher, V3_HELLO_LEN};

        fn handshake_keys() -> &'static Arc<HandshakeKeyPair> {
            static KEYS: OnceLock<Arc<HandshakeKeyPair>> = OnceLock::new();
            KEYS.get_or_init(|| Arc::new(HandshakeKeyPair::generate().unwrap()))
        }

        fn new_v3_session() -> ServerSession {
            new_session().with_v3(handshake_keys().clone())
        }

        fn connect_v3(store: &Store) -> (ServerSession, NoiseCipher, [u8; 32]) {
            let mut session = new_v3_session();
            let (client, hello) =
                ClientHandshakeV3::start(handshake_keys().public(), &mut rand::rng()).unwrap();
            let (reply, close) = sent(feed(store, &mut session, &hello));
            assert!(!close);
            let established = client.finish(&reply).unwrap();
            assert_eq!(session.version(), Some(3));
            (session, established.cipher, established.handshake_hash)
        }

        fn call(
            store: &Store,
            session: &mut ServerSession,
            cipher: &mut NoiseCipher,
            msg: &XlRegMsg,
        ) -> (XlRegMsg, bool) {
            let frame = cipher.seal(&msg.encode_to_vec());
            let (reply, close) = sent(feed(store, session, &frame));
            let plaintext = cipher.open(&reply).unwrap();
            (XlRegMsg::decode(plaintext.as_slice()).unwrap(), close)
        }

        #[test]
        fn a_whole_v3_session_binds_the_token_to_the_handshake_hash() {
            let store = Store::temporary().unwrap();
            let (mut session, mut cipher, hash) = connect_v3(&store);
            let member = member_msg_for(&hash, 0, "m3", None, &["127.0.0.1:9"]);
            let (reply, close) = call(&store, &mut session, &mut cipher, &member);
            assert_eq!((reply.op, close), (Some(Tag::MemberOk as i32), false));
            let (reply, close) = call(&store, &mut session, &mut cipher, &op(Tag::Bye));
            assert_eq!((reply.op, close), (Some(Tag::Ack as i32), true));
            assert_eq!(session.report().outcome, Outcome::Bye);

            // A token signed for another session's hash is refused as unauthorized.
            let (mut session, mut cipher, _) = connect_v3(&store);
            let (_, _, other_hash) = connect_v3(&store);
            let member = member_msg_for(&other_hash, 0, "m3", None, &["127.0.0.1:9"]);
            let (reply, close) = call(&store, &mut session, &mut cipher, &member);
            assert_eq!(reply.err_kind, Some(ErrCode::Unauthorized as i32));
            assert!(close);
        }

        #[test]
        fn with_a_previous_key_set_clients_of_either_set_get_a_session() {
            let store = Store::temporary().unwrap();
            let current = Arc::new(HandshakeKeyPair::generate().unwrap());
            let overlapping = || {
                new_session()
                    .with_v3(current.clone())
                    .with_previous_v3(handshake_keys().clone())
            };
            for keys in [current.public(), handshake_keys().public()] {
                let mut session = overlapping();
                let (client, hello) = ClientHandshakeV3::start(keys, &mut rand::rng()).unwrap();
                let (reply, close) = sent(feed(&store, &mut session, &hello));
                assert!(!close);
                let mut established = client.finish(&reply).unwrap();
                let member = member_msg_for(
                    &established.handshake_hash,
                    0,
                    "rotated",
                    None,
                    &["127.0.0.1:9"],
                );
                let (reply, _) = call(&store, &mut session, &mut established.cipher, &member);
                assert_eq!(reply.op, Some(Tag::MemberOk as i32));
            }
            // Without the previous set (the overlap is over), its clients are closed unanswered.
            let mut session = new_session().with_v3(current.clone());
            let (_, hello) =
                ClientHandshakeV3::start(handshake_keys().public(), &mut rand::rng()).unwrap();
            assert!(matches!(
                feed(&store, &mut session, &hello),
                Some(Step::Close)
            ));
        }

        #[test]
        fn one_core_serves_v2_and_v3_and_tells_them_apart_by_the_first_frame() {
            let store = Store::temporary().unwrap();
            // An xlReg/2 hello to a registry that also serves xlReg/3.
            let mut session = new_v3_session();
            let (client, hello) = ClientHandshake::start(registry_key().public_key()).unwrap();
            let (reply, _) = sent(feed(&store, &mut session, &hello));
            let keys = client.finish(&reply).unwrap();
            assert_eq!((keys.version, session.version()), (2, Some(2)));
            // An xlReg/3 first message to a registry without handshake keys is not an RSA
            // ciphertext: closed unanswered, like any undecryptable hello.
            let mut session = new_session();
            let (_, hello) =
                ClientHandshakeV3::start(handshake_keys().public(), &mut rand::rng()).unwrap();
            assert!(matches!(
                feed(&store, &mut session, &hello),
                Some(Step::Close)
            ));
            assert_eq!(session.report().outcome, Outcome::Dropped);
        }

        #[test]
        fn hostile_first_messages_close_silently() {
            let store = Store::temporary().unwrap();
            let (_, hello) =
                ClientHandshakeV3::start(handshake_keys().public(), &mut rand::rng()).unwrap();
            let other = HandshakeKeyPair::generate().unwrap();
            let (_, to_other) = ClientHandshakeV3::start(other.public(), &mut rand::rng()).unwrap();
            let mut flipped = hello.clone();
            flipped[V3_HELLO_LEN - 20] ^= 0x80;
            let mut garbage = vec![0u8; V3_HELLO_LEN];
            garbage[..4].copy_from_slice(b"XLR3");
            for (what, bad) in [
                ("wrong static keys", to_other),
                ("bit flip", flipped),
                ("garbage", garbage),
                ("truncated", hello[..V3_HELLO_LEN - 1].to_vec()),
            ] {
                let mut session = new_v3_session();
                assert!(
                    matches!(feed(&store, &mut session, &bad), Some(Step::Close)),
                    "{what}"
                );
                assert_eq!(session.report().outcome, Outcome::Dropped, "{what}");
            }
            // A first message cut short in its frame waits for the rest, then times out.
            let mut session = new_v3_session();
            let whole = frame::encode(&hello);
            session.on_bytes(&whole[..whole.len() - 1]);
            assert!(session.poll(NOW).is_none());
            session.on_timeout(NOW + TIMEOUTS.handshake_ms);
            assert!(matches!(session.poll(NOW), Some(Step::Close)));
            assert!(matches!(
                session.report().outcome,
                Outcome::TimedOut {
                    established: false,
                    ..
                }
            ));
            assert_eq!(store.counts().unwrap().nodes, 0);
        }
    }

    #[test]
    fn a_frame_over_the_limit_ends_the_session() {
        let mut session = new_session();
        session.on_bytes(&u32::MAX.to_be_bytes());
        assert!(matches!(session.poll(NOW), Some(Step::Close)));
        assert!(matches!(
            session.report().outcome,
            Outcome::FrameTooLarge { len, max: 65_536 } if len == u64::from(u32::MAX)
        ));
    }
}
