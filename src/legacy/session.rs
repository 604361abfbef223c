//! The xlReg 1.9 server session core: a deterministic state machine from received bytes to
//! steps, for the opt-in legacy listener.
//!
//! Pure, like [`crate::protocol`], and run by the same driver through the same
//! [`SessionCore`] trait: it owns no socket, no clock, no store handle and no global
//! randomness (session keys and IVs come from the RNG it is given). Message boundaries are
//! found by [`Assembler`], since the 1.9 wire has no framing: bytes in, whole messages out.
//! A hello not whole within the handshake timeout is dropped silently; a message not whole
//! within the idle timeout after the previous reply is answered with an Error if bytes of
//! it arrived (a client that sent something undecodable and waits for an answer), and
//! dropped silently if nothing did.
//!
//! States, as the Go registry 1.9.24 enforced them:
//! `AwaitHello` -> (hello) -> `AwaitMember` -> (Member) -> `Registered`;
//! `Registered` -> (Create) -> `Created`; `Registered` or `Created` -> (Join) -> `Joined`;
//! in `Joined`, GetCluster any number of times. Bye is allowed in every state after the
//! hello and is answered with Ack, then the connection closes. Any other message is answered
//! with Error "invalid msg type for current state"; every error is an Error message
//! followed by the close. A hello that does not decrypt under the registry's comms key, or
//! does not hold exactly 44 bytes, is not answered at all.
//!
//! The semantics of each request are those of [`crate::handlers`], shared with xlReg/2, so
//! both wires see one registry; where this registry is stricter than the Go one (names,
//! endpoints, key sizes, a node ID bound to its first keys, a member name taken in a
//! cluster) the refusal reaches the 1.9 client as an Error with the reason. Replies carry
//! exactly the fields the Go server set ([`as_sent_by_go`]), zero values included.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng as _;
use zeroize::Zeroizing;

use crate::crypto::{AesKey, HelloDecryptor, AES_KEY_LEN};
use crate::handlers::get_cluster;
use crate::handlers::{self, HandlerError};
use crate::legacy::reader::Assembler;
use crate::legacy::wire::{self, Version, IV_LEN};
use crate::model::{StoreError, Write, Written};
use crate::proto::{ErrCode, Tag, XlRegMsg};
use crate::session::{
    Exchange, Millis, Outcome, ReadResult, SessionCore, SessionReport, Step, Timeouts, WrittenKind,
};
use crate::token::Scheme;

/// The Go registry's answer to a message not allowed in the current state, word for word.
pub const INVALID_STATE: &str = "invalid msg type for current state";

/// Where the session is in the 1.9 exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitMember,
    Registered,
    Created,
    Joined,
}

enum Phase {
    AwaitHello,
    Established { key: AesKey, stage: Stage },
}

/// One xlReg 1.9 connection's protocol state, on the registry side.
pub struct LegacySession {
    decryptor: Arc<HelloDecryptor>,
    version: Version,
    rng: StdRng,
    assembler: Assembler,
    phase: Phase,
    exchange: Exchange,
}

impl std::fmt::Debug for LegacySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session key stays out of debug output.
        f.debug_struct("LegacySession")
            .field("established", &self.is_established())
            .field("report", &self.exchange.report)
            .finish_non_exhaustive()
    }
}

impl LegacySession {
    /// A session starting at `now`, awaiting its hello: decrypts with the registry's comms
    /// key, announces `version` in its reply, draws its session key and IVs from `rng`,
    /// looks for a message in at most `max_message` bytes and gives the peer `timeouts` to
    /// speak.
    pub fn new(
        decryptor: Arc<HelloDecryptor>,
        version: Version,
        rng: StdRng,
        max_message: usize,
        timeouts: Timeouts,
        now: Millis,
    ) -> LegacySession {
        LegacySession {
            decryptor,
            version,
            rng,
            assembler: Assembler::new(max_message),
            phase: Phase::AwaitHello,
            exchange: Exchange::new(timeouts, now),
        }
    }

    fn on_hello(&mut self, ciphertext: &[u8], now: Millis) -> Step {
        let hello = match wire::open_hello(&self.decryptor, ciphertext) {
            Ok(hello) => hello,
            Err(error) => {
                tracing::debug!(%error, "legacy hello refused");
                return self.drop_connection();
            }
        };
        // The proposed version is ignored, as by the Go registry (its clients propose 0).
        let mut reply = wire::Hello {
            key: Zeroizing::new([0u8; AES_KEY_LEN]),
            salt: [0u8; wire::SALT_LEN],
            version: self.version,
        };
        self.rng.fill_bytes(reply.key.as_mut());
        self.rng.fill_bytes(&mut reply.salt);
        let bytes = seal_under(&hello.key, &mut self.rng, &reply.to_bytes());
        self.phase = Phase::Established {
            key: reply.key,
            stage: Stage::AwaitMember,
        };
        self.exchange.reply(bytes, false, now)
    }

    fn on_message(&mut self, mut msg: XlRegMsg, now: Millis) -> Step {
        self.exchange
            .request(msg.op.and_then(|op| Tag::try_from(op).ok()));
        let Phase::Established { stage, .. } = &self.phase else {
            return self.drop_connection();
        };
        let stage = *stage;
        // A 1.9 client cannot ask the registry to hold a reply.
        msg.wait_ms = None;
        // The assembler only yields messages whose Op is a known Tag.
        let Some(Ok(tag)) = msg.op.map(Tag::try_from) else {
            return self.refuse(ErrCode::InvalidState, INVALID_STATE.to_string());
        };
        let state = &self.exchange.report.state;
        match (stage, tag) {
            (_, Tag::Bye) => {
                let (phase, rng) = (&self.phase, &mut self.rng);
                self.exchange.last_word(
                    &handlers::bye::handle(),
                    Outcome::Bye,
                    &mut |msg: &XlRegMsg| seal(phase, rng, msg),
                )
            }
            (Stage::AwaitMember, Tag::Member) => {
                self.write(handlers::member::prepare(&msg, Scheme::Legacy, now))
            }
            (Stage::Registered, Tag::Create) => {
                self.write(handlers::create::prepare(state, &msg, now))
            }
            (Stage::Registered | Stage::Created, Tag::Join) => {
                let prepared = handlers::join::prepare(state, &msg, now);
                self.write(prepared)
            }
            // Never held: without WaitMs the answer is what is there.
            (Stage::Joined, Tag::GetCluster) => match get_cluster::request(state, &msg, now) {
                Ok(request) => self.exchange.read(request),
                Err(error) => self.handler_error(error),
            },
            _ => self.refuse(ErrCode::InvalidState, INVALID_STATE.to_string()),
        }
    }

    fn write(&mut self, prepared: Result<Write, HandlerError>) -> Step {
        match prepared {
            Ok(write) => self.exchange.write(write),
            Err(error) => self.handler_error(error),
        }
    }

    fn handler_error(&mut self, error: HandlerError) -> Step {
        let (phase, rng) = (&self.phase, &mut self.rng);
        self.exchange
            .handler_error(error, &mut |msg: &XlRegMsg| seal(phase, rng, msg))
    }

    fn refuse(&mut self, code: ErrCode, description: String) -> Step {
        let (phase, rng) = (&self.phase, &mut self.rng);
        self.exchange
            .refuse(code, description, &mut |msg: &XlRegMsg| {
                seal(phase, rng, msg)
            })
    }

    fn drop_connection(&mut self) -> Step {
        self.exchange.drop_session();
        Step::Close
    }
}

/// Encodes `reply` as the Go server would have and seals it under the session key, with a
/// fresh IV from `rng`.
fn seal(phase: &Phase, rng: &mut StdRng, reply: &XlRegMsg) -> Vec<u8> {
    use prost::Message as _;
    match phase {
        Phase::Established { key, .. } => {
            seal_under(key, rng, &as_sent_by_go(reply).encode_to_vec())
        }
        // Only reachable by a logic error; an empty write is not a message.
        Phase::AwaitHello => Vec::new(),
    }
}

/// Seals `plaintext` under `key` with a fresh IV from `rng`.
fn seal_under(key: &[u8; AES_KEY_LEN], rng: &mut StdRng, plaintext: &[u8]) -> Vec<u8> {
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut iv);
    wire::seal(key, &iv, plaintext)
}

impl SessionCore for LegacySession {
    fn on_bytes(&mut self, bytes: &[u8]) {
        self.assembler.push(bytes);
    }

    fn poll(&mut self, now: Millis) -> Option<Step> {
        if let Some(step) = self.exchange.take_next() {
            return Some(step);
        }
        if self.exchange.is_closed() {
            return Some(Step::Close);
        }
        if !self.exchange.may_take_request() {
            return None;
        }
        match &self.phase {
            Phase::AwaitHello => {
                let hello = self.assembler.take_exact(self.decryptor.ciphertext_len())?;
                Some(self.on_hello(&hello, now))
            }
            Phase::Established { key, .. } => match self.assembler.take_message(key) {
                Ok(None) => None,
                Ok(Some(msg)) => Some(self.on_message(msg, now)),
                Err(error) => Some(self.refuse(ErrCode::BadRequest, error.to_string())),
            },
        }
    }

    fn on_read(&mut self, result: ReadResult, now: Millis) {
        let (phase, rng) = (&self.phase, &mut self.rng);
        self.exchange
            .on_read(result, now, &mut |msg: &XlRegMsg| seal(phase, rng, msg));
    }

    fn on_written(&mut self, result: Result<Written, StoreError>, now: Millis) {
        let (phase, rng) = (&self.phase, &mut self.rng);
        let written = self
            .exchange
            .on_written(result, now, &mut |msg: &XlRegMsg| seal(phase, rng, msg));
        if let (Some(kind), Phase::Established { stage, .. }) = (written, &mut self.phase) {
            *stage = match kind {
                WrittenKind::Node => Stage::Registered,
                WrittenKind::Cluster => Stage::Created,
                WrittenKind::Joined => Stage::Joined,
                // The 1.9 wire sends no owner requests nor Leave.
                WrittenKind::Admission => *stage,
            };
        }
    }

    fn on_changed(&mut self) {
        self.exchange.changed();
    }

    fn poll_timeout(&self) -> Option<Millis> {
        self.exchange.poll_timeout()
    }

    fn on_timeout(&mut self, now: Millis) {
        if !self.exchange.timed_out(now) {
            return;
        }
        let buffered = self.assembler.buffered();
        if self.is_established() && buffered > 0 {
            // A client that sent something undecodable and waits for an answer gets one.
            let description =
                format!("the {buffered} bytes received do not decrypt to a valid message");
            let step = self.refuse(ErrCode::BadRequest, description);
            self.exchange.queue(step);
            return;
        }
        let established = self.is_established();
        self.exchange.time_out(established);
    }

    fn on_shutdown(&mut self) {
        self.exchange.expire_wait();
    }

    fn is_idle(&self) -> bool {
        self.exchange.is_idle(self.assembler.buffered())
    }

    fn buffered(&self) -> usize {
        self.assembler.buffered()
    }

    fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    fn report(&self) -> &SessionReport {
        &self.exchange.report
    }
}

/// The reply with exactly the fields the Go registry 1.9.24 set for its Op (the shared
/// handlers also fill in xlReg/2 fields, which a 1.9 client never saw):
/// MemberOK {MemberID, MemberAttrs}; CreateReply and JoinReply {ClusterID, ClusterMaxSize,
/// ClusterAttrs, EndPointCount}; ClusterMembers {ClusterID, Which, Tokens}; Ack {};
/// Error {ErrDesc}.
pub fn as_sent_by_go(reply: &XlRegMsg) -> XlRegMsg {
    let mut out = XlRegMsg {
        op: reply.op,
        ..XlRegMsg::default()
    };
    match reply.op.map(Tag::try_from) {
        Some(Ok(Tag::MemberOk)) => {
            out.member_id = reply.member_id.clone();
            out.member_attrs = reply.member_attrs;
        }
        Some(Ok(Tag::CreateReply | Tag::JoinReply)) => {
            out.cluster_id = reply.cluster_id.clone();
            out.cluster_max_size = reply.cluster_max_size;
            out.cluster_attrs = reply.cluster_attrs;
            out.end_point_count = reply.end_point_count;
        }
        Some(Ok(Tag::ClusterMembers)) => {
            out.cluster_id = reply.cluster_id.clone();
            out.which = reply.which;
            out.tokens = reply.tokens.clone();
        }
        Some(Ok(Tag::Error)) => out.err_desc = reply.err_desc.clone(),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RsaKeyPair;
    use crate::driver::poll_applying;
    use crate::handlers::testing::keys;
    use crate::legacy::wire::Hello;
    use crate::model::Refusal;
    use crate::store::Store;
    use crate::token::TokenFields;
    use rand::SeedableRng as _;

    const NOW: Millis = 1_000;
    const TIMEOUTS: Timeouts = Timeouts {
        handshake_ms: 10_000,
        idle_ms: 60_000,
    };

    fn new_session(ck: &RsaKeyPair, version: Version) -> LegacySession {
        LegacySession::new(
            Arc::new(ck.hello_decryptor().unwrap()),
            version,
            StdRng::seed_from_u64(9),
            4096,
            TIMEOUTS,
            NOW,
        )
    }

    const CK_PEM: &str = include_str!("../../tests/data/legacy-vectors/registry-ck.pem");

    struct Client {
        session: LegacySession,
        key: [u8; AES_KEY_LEN],
    }

    fn hello_bytes(ck: &RsaKeyPair, plaintext: &[u8]) -> Vec<u8> {
        ck.public_key().encrypt_oaep_sha1(plaintext).unwrap()
    }

    /// A session past its hello, with the session key the client learned.
    fn established(store: &Store) -> Client {
        let ck = RsaKeyPair::from_pem(CK_PEM).unwrap();
        let mut session = new_session(&ck, Version([1, 9, 30, 0]));
        let key1 = [1u8; AES_KEY_LEN];
        let mut plaintext = key1.to_vec();
        plaintext.extend_from_slice(&[2u8; wire::SALT_LEN]);
        plaintext.extend_from_slice(&[0u8; 4]);
        // The hello arrives one byte at a time.
        for byte in hello_bytes(&ck, &plaintext) {
            assert!(!session.is_established());
            session.on_bytes(&[byte]);
            if let Some(step) = poll_applying(&mut session, store, NOW) {
                let Step::Send { bytes, close, .. } = step else {
                    panic!("the hello was refused")
                };
                assert!(!close);
                let reply = Hello::parse(&wire::open(&key1, &bytes).unwrap()).unwrap();
                assert_eq!(reply.version.0, [1, 9, 30, 0]);
                return Client {
                    session,
                    key: *reply.key,
                };
            }
        }
        panic!("no reply to a whole hello")
    }

    impl Client {
        fn send(&mut self, store: &Store, msg: &XlRegMsg) -> (XlRegMsg, bool) {
            self.session.on_bytes(&wire::seal_message(&self.key, msg));
            match poll_applying(&mut self.session, store, NOW) {
                Some(Step::Send { bytes, close, .. }) => {
                    (wire::open_message(&self.key, &bytes).unwrap(), close)
                }
                other => panic!("{other:?} instead of a reply"),
            }
        }
    }

    fn op(tag: Tag) -> XlRegMsg {
        XlRegMsg {
            op: Some(tag as i32),
            ..XlRegMsg::default()
        }
    }

    fn member(which: usize, name: &str, id: &[u8]) -> XlRegMsg {
        let (comms, sig) = &keys()[which];
        let endpoints = vec!["127.0.0.1:4000".to_string()];
        let fields = TokenFields {
            id: Some(id),
            name,
            attrs: 1,
            comms_key: comms.public_key().to_spki_der(),
            sig_key: sig.public_key().to_spki_der(),
            endpoints: &endpoints,
        };
        XlRegMsg {
            member_specs: Some(crate::token::sign_legacy(&fields, sig).unwrap()),
            ..op(Tag::Member)
        }
    }

    fn create(name: &str) -> XlRegMsg {
        XlRegMsg {
            cluster_name: Some(name.to_string()),
            cluster_max_size: Some(3),
            cluster_attrs: Some(0),
            end_point_count: Some(1),
            ..op(Tag::Create)
        }
    }

    fn assert_invalid_state((reply, close): (XlRegMsg, bool)) {
        // Op and ErrDesc only, as the Go server sent it.
        let expected = XlRegMsg {
            err_desc: Some(INVALID_STATE.to_string()),
            ..op(Tag::Error)
        };
        assert_eq!(reply, expected);
        assert!(close);
    }

    #[test]
    fn a_full_session_follows_the_go_state_machine() {
        let store = Store::temporary().unwrap();
        let mut client = established(&store);
        let id = [7u8; 20];
        let (ok, _) = client.send(&store, &member(0, "m-0", &id));
        assert_eq!(ok.op, Some(Tag::MemberOk as i32));
        assert_eq!(ok.member_id.as_deref(), Some(&id[..]));
        assert_eq!(ok.member_attrs, Some(1));
        let (created, _) = client.send(&store, &create("trio"));
        assert_eq!(created.op, Some(Tag::CreateReply as i32));
        assert_eq!(created.cluster_attrs, Some(0), "zero values are sent");
        assert!(created.cluster_name.is_none() && created.cluster_size.is_none());
        // Neither ID nor name: the cluster just created.
        let (joined, _) = client.send(&store, &op(Tag::Join));
        assert_eq!(joined.cluster_id, created.cluster_id);
        assert!(joined.slot.is_none());
        for _ in 0..3 {
            let get = XlRegMsg {
                cluster_id: created.cluster_id.clone(),
                which: Some(u64::MAX),
                // An xlReg/2 field a 1.9 client never sends: ignored, never held.
                wait_ms: Some(60_000),
                ..op(Tag::GetCluster)
            };
            let (members, close) = client.send(&store, &get);
            assert!(!close);
            assert_eq!(members.which, Some(1));
            assert_eq!(members.tokens.len(), 1);
            assert_eq!(members.tokens[0].id.as_deref(), Some(&id[..]));
            assert!(members.cluster_max_size.is_none());
        }
        let (ack, close) = client.send(&store, &op(Tag::Bye));
        assert_eq!(ack, op(Tag::Ack));
        assert!(close);
        assert_eq!(client.session.report().outcome, Outcome::Bye);
        assert!(matches!(client.session.poll(NOW), Some(Step::Close)));
        assert_eq!(client.session.report().requests, 7);
    }

    #[test]
    fn messages_out_of_state_get_the_go_error_text() {
        let store = Store::temporary().unwrap();
        let id = [8u8; 20];
        let sequences: Vec<(Vec<XlRegMsg>, XlRegMsg)> = vec![
            (vec![], create("x")),
            (vec![], op(Tag::Join)),
            (vec![], op(Tag::GetCluster)),
            (vec![], op(Tag::Ack)),
            (vec![], op(Tag::RegCredRequest)),
            (vec![member(1, "m-1", &id)], member(1, "m-1", &id)),
            (vec![member(1, "m-1", &id)], op(Tag::GetCluster)),
            (vec![member(1, "m-1", &id), create("y")], create("y")),
            (
                vec![member(1, "m-1", &id), create("y")],
                op(Tag::GetCluster),
            ),
            (
                vec![member(1, "m-1", &id), create("y"), op(Tag::Join)],
                op(Tag::Join),
            ),
            (
                vec![member(1, "m-1", &id), create("y"), op(Tag::Join)],
                create("z"),
            ),
        ];
        for (before, wrong) in sequences {
            let mut client = established(&store);
            for msg in &before {
                let (reply, close) = client.send(&store, msg);
                assert!(!close, "{reply:?}");
            }
            assert_invalid_state(client.send(&store, &wrong));
            assert_eq!(
                client.session.report().outcome,
                Outcome::Refused(ErrCode::InvalidState)
            );
        }
        // Bye is allowed right after the hello.
        let mut client = established(&store);
        assert_eq!(client.send(&store, &op(Tag::Bye)), (op(Tag::Ack), true));
    }

    #[test]
    fn stricter_rules_come_back_as_1_9_errors() {
        let store = Store::temporary().unwrap();
        let mut first = established(&store);
        first.send(&store, &member(0, "same", &[1u8; 20]));
        first.send(&store, &create("dup"));
        first.send(&store, &op(Tag::Join));
        // Another node with the same member name.
        let mut second = established(&store);
        second.send(&store, &member(1, "same", &[2u8; 20]));
        let join = XlRegMsg {
            cluster_name: Some("dup".into()),
            ..op(Tag::Join)
        };
        let (error, close) = second.send(&store, &join);
        assert!(close);
        assert_eq!(error.op, Some(Tag::Error as i32));
        assert!(error.err_kind.is_none());
        assert!(
            error
                .err_desc
                .unwrap()
                .contains("different member named same"),
            "the reason reaches the client"
        );
        // A known ID presented with other keys.
        let mut thief = established(&store);
        let (error, _) = thief.send(&store, &member(2, "thief", &[1u8; 20]));
        assert!(error
            .err_desc
            .unwrap()
            .contains("registered with a different signing key"));
        // Unknown clusters, by name and by ID.
        for join in [
            XlRegMsg {
                cluster_name: Some("nope".into()),
                ..op(Tag::Join)
            },
            XlRegMsg {
                cluster_id: Some(vec![9u8; 20]),
                ..op(Tag::Join)
            },
        ] {
            let mut client = established(&store);
            client.send(&store, &member(2, "other", &[3u8; 20]));
            let (error, close) = client.send(&store, &join);
            assert!(close);
            assert!(error.err_desc.unwrap().starts_with("no such cluster"));
        }
    }

    #[test]
    fn nothing_more_is_taken_while_a_write_is_outstanding_and_a_result_nobody_asked_for_drops() {
        let store = Store::temporary().unwrap();
        let mut client = established(&store);
        client.session.on_bytes(&wire::seal_message(
            &client.key,
            &member(0, "m-0", &[7u8; 20]),
        ));
        assert!(matches!(client.session.poll(NOW), Some(Step::Write(_))));
        // The client speaks again before it is answered: nothing is taken until the write's
        // result is in.
        client
            .session
            .on_bytes(&wire::seal_message(&client.key, &op(Tag::Bye)));
        assert!(client.session.poll(NOW).is_none());
        let write = crate::store::AdminStore::apply_now(
            &store,
            &handlers::member::prepare(&member(0, "m-0", &[7u8; 20]), Scheme::Legacy, NOW).unwrap(),
        );
        client.session.on_written(write, NOW);
        let Some(Step::Send { bytes, .. }) = client.session.poll(NOW) else {
            panic!("no MemberOK")
        };
        assert_eq!(
            wire::open_message(&client.key, &bytes).unwrap().op,
            Some(Tag::MemberOk as i32)
        );
        // A second result, with no write outstanding: the session is dropped.
        client.session.on_written(
            Err(StoreError::Refused(Refusal::NoSuchCluster("x".into()))),
            NOW,
        );
        assert!(matches!(client.session.poll(NOW), Some(Step::Close)));
        assert_eq!(client.session.report().outcome, Outcome::Dropped);
    }

    #[test]
    fn bad_hellos_are_dropped_without_a_word() {
        let store = Store::temporary().unwrap();
        let ck = RsaKeyPair::from_pem(CK_PEM).unwrap();
        let other = &keys()[0].0;
        let cases = [
            // Under another key.
            hello_bytes(other, &[0u8; wire::HELLO_LEN]),
            // Under the right key, but 43 and 45 bytes of plaintext.
            hello_bytes(&ck, &[0u8; wire::HELLO_LEN - 1]),
            hello_bytes(&ck, &[0u8; wire::HELLO_LEN + 1]),
            vec![0u8; 256],
        ];
        for hello in cases {
            let mut session = new_session(&ck, Version::default());
            session.on_bytes(&hello);
            assert!(matches!(session.poll(NOW), Some(Step::Close)));
            assert_eq!(session.report().outcome, Outcome::Dropped);
        }
        // A hello cut short: nothing to do until the handshake timeout, then a silent close.
        let mut session = new_session(&ck, Version::default());
        session.on_bytes(&[0u8; 100]);
        assert!(session.poll(NOW).is_none());
        assert_eq!(session.poll_timeout(), Some(NOW + TIMEOUTS.handshake_ms));
        session.on_timeout(NOW + TIMEOUTS.handshake_ms - 1);
        assert!(session.poll(NOW + TIMEOUTS.handshake_ms - 1).is_none());
        session.on_timeout(NOW + TIMEOUTS.handshake_ms);
        assert!(matches!(session.poll(NOW), Some(Step::Close)));
        assert_eq!(
            session.report().outcome,
            Outcome::TimedOut {
                established: false,
                after_ms: TIMEOUTS.handshake_ms
            }
        );
        let _ = store;
    }

    #[test]
    fn undecodable_and_oversized_input_is_answered_with_an_error() {
        let store = Store::temporary().unwrap();
        // Shorter than a block, not whole blocks, whole blocks of junk: wait, then an
        // Error once the idle timeout passes.
        let idle_over = NOW + TIMEOUTS.idle_ms;
        for junk in [&[0u8; 10][..], &[0x00u8; 36], &[0x5Au8; 48]] {
            let mut client = established(&store);
            client.session.on_bytes(junk);
            assert!(client.session.poll(NOW).is_none());
            client.session.on_timeout(idle_over);
            let Some(Step::Send { bytes, close, .. }) = client.session.poll(idle_over) else {
                panic!("no answer")
            };
            assert!(close);
            let error = wire::open_message(&client.key, &bytes).unwrap();
            assert!(error.err_desc.unwrap().contains("do not decrypt"));
        }
        // Idle: a silent close.
        let mut client = established(&store);
        client.session.on_timeout(idle_over);
        assert!(matches!(client.session.poll(idle_over), Some(Step::Close)));
        assert_eq!(
            client.session.report().outcome,
            Outcome::TimedOut {
                established: true,
                after_ms: TIMEOUTS.idle_ms
            }
        );
        // More than the limit without a message.
        let mut client = established(&store);
        client.session.on_bytes(&[0u8; 5000]);
        let Some(Step::Send { bytes, close, .. }) = client.session.poll(NOW) else {
            panic!("no answer")
        };
        assert!(close);
        let error = wire::open_message(&client.key, &bytes).unwrap();
        assert!(error.err_desc.unwrap().contains("limit is 4096"));
    }
}
