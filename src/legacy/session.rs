//! The xlReg 1.9 server session: a deterministic state machine from received bytes to
//! replies, for the opt-in legacy listener.
//!
//! Pure, like [`crate::protocol`]: it owns no socket and no clock. The glue pushes whatever
//! bytes arrive ([`LegacySession::push`]), asks for the next [`Step`]
//! ([`LegacySession::next_step`]) and tells it when the peer stalled
//! ([`LegacySession::on_stall`]). Message boundaries are found by [`Assembler`], since the
//! 1.9 wire has no framing.
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

use crate::crypto::{AesKey, HelloDecryptor};
use crate::handlers::get_cluster::{self, GetOutcome};
use crate::handlers::{self, Context, HandlerError};
use crate::id::Id;
use crate::legacy::reader::Assembler;
use crate::legacy::wire::{self, Version};
use crate::proto::{ErrCode, Tag, XlRegMsg};
use crate::protocol::{Outcome, SessionReport};
use crate::store::{StoreError, Write, Written};
use crate::token::Scheme;

/// The Go registry's answer to a message not allowed in the current state, word for word.
pub const INVALID_STATE: &str = "invalid msg type for current state";

/// What the glue must do next.
#[derive(Debug)]
pub enum Step {
    /// Write `bytes` in one write. If `durable`, only once every store change made so far is
    /// on disk. If `close`, close the connection after writing. If `joined` is set, that
    /// cluster gained or refreshed a member: wake its waiters once the change is durable.
    Send {
        /// The whole message (hello reply or session message).
        bytes: Vec<u8>,
        /// Wait for the store to be durable before writing.
        durable: bool,
        /// Close after writing.
        close: bool,
        /// The cluster a Join changed.
        joined: Option<Id>,
    },
    /// Apply `write` to the store and pass the result to [`LegacySession::on_written`] (the
    /// registry uses [`Store::write`](crate::store::Store::write): batched, then durable).
    Write(Write),
    /// Close the connection without a word.
    Close,
}

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
    Closed,
}

/// One xlReg 1.9 connection's protocol state, on the registry side.
pub struct LegacySession {
    decryptor: Arc<HelloDecryptor>,
    version: Version,
    assembler: Assembler,
    phase: Phase,
    report: SessionReport,
}

impl std::fmt::Debug for LegacySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session key stays out of debug output.
        f.debug_struct("LegacySession")
            .field("established", &self.is_established())
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl LegacySession {
    /// A session awaiting its hello: decrypts with the registry's comms key, announces
    /// `version` in its reply, and looks for a message in at most `max_message` bytes.
    pub fn new(
        decryptor: Arc<HelloDecryptor>,
        version: Version,
        max_message: usize,
    ) -> LegacySession {
        LegacySession {
            decryptor,
            version,
            assembler: Assembler::new(max_message),
            phase: Phase::AwaitHello,
            report: SessionReport::default(),
        }
    }

    /// What the session has done so far, for its log line.
    pub fn report(&self) -> &SessionReport {
        &self.report
    }

    /// True once the hello is answered.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    /// Bytes received that do not form a hello or message yet.
    pub fn buffered(&self) -> usize {
        self.assembler.buffered()
    }

    /// Feeds bytes received from the peer, in whatever pieces they came.
    pub fn push(&mut self, bytes: &[u8]) {
        self.assembler.push(bytes);
    }

    /// The next thing to do about the bytes received, or `None` until more arrive.
    pub fn next_step(&mut self, ctx: &mut Context<'_>) -> Option<Step> {
        match &self.phase {
            Phase::Closed => Some(Step::Close),
            Phase::AwaitHello => {
                let hello = self.assembler.take_exact(self.decryptor.ciphertext_len())?;
                Some(self.on_hello(&hello))
            }
            Phase::Established { key, .. } => match self.assembler.take_message(key) {
                Ok(None) => None,
                Ok(Some(msg)) => Some(self.on_message(msg, ctx)),
                Err(error) => Some(self.refuse(ErrCode::BadRequest, error.to_string())),
            },
        }
    }

    /// The peer stopped sending before its bytes formed a message (the read timed out). A
    /// client that sent something undecodable and waits for an answer gets an Error;
    /// otherwise the connection is closed without a word.
    pub fn on_stall(&mut self) -> Step {
        if self.is_established() && self.buffered() > 0 {
            let description = format!(
                "the {} bytes received do not decrypt to a valid message",
                self.buffered()
            );
            return self.refuse(ErrCode::BadRequest, description);
        }
        self.drop_connection()
    }

    fn on_hello(&mut self, ciphertext: &[u8]) -> Step {
        let hello = match wire::open_hello(&self.decryptor, ciphertext) {
            Ok(hello) => hello,
            Err(error) => {
                tracing::debug!(%error, "legacy hello refused");
                return self.drop_connection();
            }
        };
        // The proposed version is ignored, as by the Go registry (its clients propose 0).
        let reply = wire::Hello::fresh(self.version);
        let bytes = wire::seal_fresh(&hello.key, &reply.to_bytes());
        self.phase = Phase::Established {
            key: reply.key,
            stage: Stage::AwaitMember,
        };
        Step::Send {
            bytes,
            durable: false,
            close: false,
            joined: None,
        }
    }

    fn on_message(&mut self, mut msg: XlRegMsg, ctx: &mut Context<'_>) -> Step {
        self.report.requests += 1;
        self.report.last_op = msg.op.and_then(|op| Tag::try_from(op).ok());
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
        match (stage, tag) {
            (_, Tag::Bye) => self.last_word(&handlers::bye::handle(), Outcome::Bye),
            (Stage::AwaitMember, Tag::Member) => {
                self.write(handlers::member::prepare(&msg, Scheme::Legacy, ctx.now_ms))
            }
            (Stage::Registered, Tag::Create) => {
                self.write(handlers::create::prepare(&msg, ctx.now_ms))
            }
            (Stage::Registered | Stage::Created, Tag::Join) => self.write(handlers::join::prepare(
                &self.report.state,
                &msg,
                ctx.now_ms,
            )),
            (Stage::Joined, Tag::GetCluster) => {
                let outcome = match get_cluster::handle(ctx, &self.report.state, &msg) {
                    // Never held without WaitMs; answer with what is there regardless.
                    Ok(GetOutcome::Wait(wait)) => get_cluster::resume(ctx, &wait, true),
                    other => other,
                };
                match outcome {
                    Ok(GetOutcome::Ready(reply)) => Step::Send {
                        bytes: self.seal(&reply),
                        // Never show a member whose join is not yet on disk.
                        durable: true,
                        close: false,
                        joined: None,
                    },
                    Ok(GetOutcome::Wait(_)) => self.drop_connection(),
                    Err(error) => self.handler_error(error),
                }
            }
            _ => self.refuse(ErrCode::InvalidState, INVALID_STATE.to_string()),
        }
    }

    fn write(&mut self, prepared: Result<Write, HandlerError>) -> Step {
        match prepared {
            Ok(write) => Step::Write(write),
            Err(error) => self.handler_error(error),
        }
    }

    /// [`next_step`](Self::next_step), applying a write it asks for at once through
    /// `ctx.store` ([`Store::apply`](crate::store::Store::apply): unbatched, not yet durable):
    /// for tests and tools that drive the session without the glue.
    pub fn next_step_applying(&mut self, ctx: &mut Context<'_>) -> Option<Step> {
        match self.next_step(ctx)? {
            Step::Write(write) => {
                let result = ctx.store.apply_now(&write);
                Some(self.on_written(result))
            }
            step => Some(step),
        }
    }

    /// Takes the result of the [`Step::Write`] returned last and says what to send.
    pub fn on_written(&mut self, result: Result<Written, StoreError>) -> Step {
        let written = match result {
            Ok(written) => written,
            Err(error) => return self.handler_error(HandlerError::from(error)),
        };
        let next = match &written {
            Written::Node(_) => Stage::Registered,
            Written::Cluster(..) => Stage::Created,
            Written::Joined(_) => Stage::Joined,
        };
        let reply = handlers::finish(&mut self.report.state, written);
        let bytes = self.seal(&reply.msg);
        let Phase::Established { stage, .. } = &mut self.phase else {
            return self.drop_connection();
        };
        *stage = next;
        Step::Send {
            bytes,
            // The store answers a write only once it (and all it read) is durable.
            durable: false,
            close: false,
            joined: reply.joined,
        }
    }

    fn handler_error(&mut self, error: HandlerError) -> Step {
        let (code, description) = error.refusal();
        self.refuse(code, description)
    }

    fn refuse(&mut self, code: ErrCode, description: String) -> Step {
        let error = handlers::error_message(code, description);
        self.last_word(&error, Outcome::Refused(code))
    }

    /// Sends `msg` (Ack or Error), then closes.
    fn last_word(&mut self, msg: &XlRegMsg, outcome: Outcome) -> Step {
        self.report.outcome = outcome;
        let bytes = self.seal(msg);
        self.phase = Phase::Closed;
        Step::Send {
            bytes,
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

    /// Encodes `reply` as the Go server would have and seals it under the session key.
    fn seal(&self, reply: &XlRegMsg) -> Vec<u8> {
        match &self.phase {
            Phase::Established { key, .. } => wire::seal_message(key, &as_sent_by_go(reply)),
            // Only reachable by a logic error; an empty write is not a message.
            _ => Vec::new(),
        }
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
    use crate::crypto::{RsaKeyPair, AES_KEY_LEN};
    use crate::handlers::testing::{keys, with_ctx};
    use crate::legacy::wire::Hello;
    use crate::store::Store;
    use crate::token::TokenFields;

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
        let mut session = LegacySession::new(
            Arc::new(ck.hello_decryptor().unwrap()),
            Version([1, 9, 30, 0]),
            4096,
        );
        let key1 = [1u8; AES_KEY_LEN];
        let mut plaintext = key1.to_vec();
        plaintext.extend_from_slice(&[2u8; wire::SALT_LEN]);
        plaintext.extend_from_slice(&[0u8; 4]);
        // The hello arrives one byte at a time.
        for byte in hello_bytes(&ck, &plaintext) {
            assert!(!session.is_established());
            session.push(&[byte]);
            if let Some(step) = with_ctx(store, |ctx| session.next_step(ctx)) {
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
            self.session.push(&wire::seal_message(&self.key, msg));
            match with_ctx(store, |ctx| self.session.next_step_applying(ctx)) {
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
        assert!(matches!(
            with_ctx(&store, |ctx| client.session.next_step(ctx)),
            Some(Step::Close)
        ));
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
            let mut session = LegacySession::new(
                Arc::new(ck.hello_decryptor().unwrap()),
                Version::default(),
                4096,
            );
            session.push(&hello);
            assert!(matches!(
                with_ctx(&store, |ctx| session.next_step(ctx)),
                Some(Step::Close)
            ));
            assert_eq!(session.report().outcome, Outcome::Dropped);
        }
        // A hello cut short: nothing to do until the peer stalls, then a silent close.
        let mut session = LegacySession::new(
            Arc::new(ck.hello_decryptor().unwrap()),
            Version::default(),
            4096,
        );
        session.push(&[0u8; 100]);
        assert!(with_ctx(&store, |ctx| session.next_step(ctx)).is_none());
        assert!(matches!(session.on_stall(), Step::Close));
    }

    #[test]
    fn undecodable_and_oversized_input_is_answered_with_an_error() {
        let store = Store::temporary().unwrap();
        // Shorter than a block, not whole blocks, whole blocks of junk: wait, then an
        // Error once the peer stalls.
        for junk in [&[0u8; 10][..], &[0u8; 36], &[0x5Au8; 48]] {
            let mut client = established(&store);
            client.session.push(junk);
            assert!(with_ctx(&store, |ctx| client.session.next_step(ctx)).is_none());
            let Step::Send { bytes, close, .. } = client.session.on_stall() else {
                panic!("no answer")
            };
            assert!(close);
            let error = wire::open_message(&client.key, &bytes).unwrap();
            assert!(error.err_desc.unwrap().contains("do not decrypt"));
        }
        // Idle: a silent close.
        let mut client = established(&store);
        assert!(matches!(client.session.on_stall(), Step::Close));
        // More than the limit without a message.
        let mut client = established(&store);
        client.session.push(&[0u8; 5000]);
        let Some(Step::Send { bytes, close, .. }) =
            with_ctx(&store, |ctx| client.session.next_step(ctx))
        else {
            panic!("no answer")
        };
        assert!(close);
        let error = wire::open_message(&client.key, &bytes).unwrap();
        assert!(error.err_desc.unwrap().contains("limit is 4096"));
    }
}
