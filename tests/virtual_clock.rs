//! The session cores of both wires driven against pure client sessions under a virtual
//! clock: no sockets, no timers, no sleeps. Every deadline (the hello, the silence between
//! requests, a held GetCluster) is core state, so each test says exactly at which
//! millisecond something must and must not happen, and a GetCluster wait is woken by a join
//! from another session exactly as the driver does it: a session that waits watches the
//! cluster through the store's port (`SessionStore::watch_cluster`), and the store itself
//! tells every watcher once a join is applied.
//!
//! The store is the in-memory backend, driven through the same port as the driver drives
//! sled (the writes through `SessionStore::apply`, run to completion at once, as the memory
//! backend answers without waiting); the keys are the fixture keys of
//! tests/data/legacy-vectors (no key generation), and each core's RNG is seeded.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prost::Message as _;
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use tokio::sync::watch;
use xlreg::crypto::{HelloDecryptor, RsaKeyPair, AES_KEY_LEN};
use xlreg::frame::{self, FrameDecoder, MAX_FRAME_LEN};
use xlreg::legacy::session::LegacySession;
use xlreg::legacy::wire::{self, Hello, Version};
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::protocol::ServerSession;
use xlreg::session::Read;
use xlreg::session::{Millis, Outcome, SessionCore, Step, Timeouts};
use xlreg::session_crypto::{ClientHandshake, Role, SessionCipher, SessionKeys};
use xlreg::store::{AdminStore, MemoryStore, SessionStore, StoreError};
use xlreg::token::{self, TokenFields};

const REGISTRY_CK: &str = include_str!("data/legacy-vectors/registry-ck.pem");
const MEMBER_1: &str = include_str!("data/legacy-vectors/member-1.pem");
const MEMBER_2: &str = include_str!("data/legacy-vectors/member-2.pem");

const TIMEOUTS: Timeouts = Timeouts {
    handshake_ms: 10_000,
    idle_ms: 60_000,
};

struct Keys {
    registry: RsaKeyPair,
    decryptor: Arc<HelloDecryptor>,
    members: [RsaKeyPair; 2],
}

/// The first key of a PEM file holding two (a member's comms and sig keys).
fn first_key(pem: &str) -> RsaKeyPair {
    let second = pem[1..].find("-----BEGIN").map_or(pem.len(), |at| at + 1);
    RsaKeyPair::from_pem(&pem[..second]).unwrap()
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let registry = RsaKeyPair::from_pem(REGISTRY_CK).unwrap();
        let decryptor = Arc::new(registry.hello_decryptor().unwrap());
        let members = [first_key(MEMBER_1), first_key(MEMBER_2)];
        Keys {
            registry,
            decryptor,
            members,
        }
    })
}

fn op(tag: Tag) -> XlRegMsg {
    XlRegMsg {
        op: Some(tag as i32),
        ..XlRegMsg::default()
    }
}

/// The client side of one xlReg/2 session: the handshake and the session cipher, no I/O.
struct Client {
    cipher: SessionCipher,
    keys: SessionKeys,
}

/// The payload of the one frame in `bytes`.
fn payload(bytes: &[u8]) -> Vec<u8> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    decoder.push(bytes);
    decoder.next_frame().unwrap().expect("a whole frame")
}

impl Client {
    fn member(&self, which: usize, name: &str) -> XlRegMsg {
        let key = &keys().members[which];
        let der = key.public_key().to_spki_der();
        let endpoints = vec![format!("127.0.0.1:{}", 4000 + which)];
        let fields = TokenFields {
            id: None,
            name,
            attrs: 0,
            comms_key: der,
            sig_key: der,
            endpoints: &endpoints,
        };
        XlRegMsg {
            member_specs: Some(token::sign_v2(&fields, key, &self.keys.server_salt).unwrap()),
            ..op(Tag::Member)
        }
    }

    fn seal(&mut self, msg: &XlRegMsg) -> Vec<u8> {
        frame::encode(&self.cipher.seal(&msg.encode_to_vec()))
    }

    fn open(&mut self, bytes: &[u8]) -> XlRegMsg {
        let plaintext = self.cipher.open(&payload(bytes)).unwrap();
        XlRegMsg::decode(plaintext.as_slice()).unwrap()
    }
}

/// Several sessions over one store, a virtual clock, and the driver's wake-up rule.
struct Net {
    store: MemoryStore,
    /// Runs the store port's futures (which the memory backend completes at once).
    runtime: tokio::runtime::Runtime,
    now: Millis,
    /// The watch each session (by its address: sessions stay put while tested) holds on a
    /// cluster, until its next reply.
    watching: HashMap<usize, watch::Receiver<()>>,
}

/// A session's identity for the watch list: its address.
fn address(session: &dyn SessionCore) -> usize {
    (session as *const dyn SessionCore).cast::<()>() as usize
}

impl Net {
    fn new() -> Net {
        Net {
            store: MemoryStore::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            now: 0,
            watching: HashMap::new(),
        }
    }

    /// Polls session `index` as the driver would: store reads and writes are carried out
    /// through the port, a watch is taken, and every session whose watched cluster the
    /// store reports changed is told so. Returns the reply, `Some(None)` for a close, `None`
    /// if the session has nothing to say.
    fn poll(
        &mut self,
        sessions: &mut [&mut dyn SessionCore],
        index: usize,
    ) -> Option<Option<(Vec<u8>, bool)>> {
        let reply = loop {
            let session = &mut *sessions[index];
            match session.poll(self.now) {
                None => break None,
                Some(Step::Read(Read::Cluster(target) | Read::ClusterWithProof(target))) => session
                    .on_read(
                        self.store.cluster_view(&target).map_err(Into::into),
                        self.now,
                    ),
                Some(Step::Write(write)) => {
                    let answer = match self.runtime.block_on(self.store.apply(vec![write])) {
                        Ok(mut answers) => answers.remove(0).map_err(StoreError::Refused),
                        Err(failure) => Err(StoreError::Storage(failure)),
                    };
                    session.on_written(answer, self.now)
                }
                Some(Step::Watch(cluster)) => {
                    let changes = self.store.watch_cluster(&cluster);
                    self.watching.insert(address(session), changes);
                }
                Some(Step::Close) => break Some(None),
                Some(Step::Send { bytes, close, .. }) => {
                    self.watching.remove(&address(session));
                    break Some(Some((bytes, close)));
                }
            }
        };
        for other in sessions.iter_mut() {
            let changed = self
                .watching
                .get_mut(&address(&**other))
                .is_some_and(|changes| changes.has_changed().unwrap_or(false));
            if changed {
                self.watching.remove(&address(&**other));
                other.on_changed();
            }
        }
        reply
    }

    /// Lets time pass to `at`, telling `session` if a deadline of its passed.
    fn advance(&mut self, session: &mut dyn SessionCore, at: Millis) {
        self.now = at;
        if session.poll_timeout().is_some_and(|due| due <= at) {
            session.on_timeout(at);
        }
    }

    fn server(&self) -> ServerSession {
        ServerSession::new(
            keys().decryptor.clone(),
            StdRng::seed_from_u64(self.now),
            64 * 1024,
            TIMEOUTS,
            self.now,
        )
    }

    /// A new xlReg/2 session at the current time, through its handshake.
    fn connect(&mut self) -> (ServerSession, Client) {
        let mut server = self.server();
        let mut rng = StdRng::seed_from_u64(self.now + 1);
        let (handshake, hello) =
            ClientHandshake::start_with(keys().registry.public_key(), &mut rng).unwrap();
        server.on_bytes(&frame::encode(&hello));
        let (reply, close) = self.poll(&mut [&mut server], 0).unwrap().unwrap();
        assert!(!close);
        let keys = handshake.finish(&payload(&reply)).unwrap();
        let cipher = SessionCipher::new(&keys.key, Role::Client);
        (server, Client { cipher, keys })
    }

    /// Sends `msg` on session 0 of `sessions` and returns the reply, if one comes now.
    fn request(
        &mut self,
        sessions: &mut [&mut dyn SessionCore],
        client: &mut Client,
        msg: &XlRegMsg,
    ) -> Option<XlRegMsg> {
        sessions[0].on_bytes(&client.seal(msg));
        match self.poll(sessions, 0)? {
            Some((bytes, _)) => Some(client.open(&bytes)),
            None => panic!("the session closed instead of answering {msg:?}"),
        }
    }

    /// A session registered as member `which`, in the cluster `name` of `size` it joined.
    fn member_of(
        &mut self,
        which: usize,
        name: &str,
        cluster: &str,
        size: u32,
    ) -> (ServerSession, Client) {
        let (mut server, mut client) = self.connect();
        let member = client.member(which, name);
        let reply = self.request(&mut [&mut server], &mut client, &member);
        assert_eq!(reply.unwrap().op, Some(Tag::MemberOk as i32));
        let create = XlRegMsg {
            cluster_name: Some(cluster.into()),
            cluster_max_size: Some(size),
            ..op(Tag::Create)
        };
        let reply = self.request(&mut [&mut server], &mut client, &create);
        assert_eq!(reply.unwrap().op, Some(Tag::CreateReply as i32));
        let reply = self.request(&mut [&mut server], &mut client, &op(Tag::Join));
        assert_eq!(reply.unwrap().op, Some(Tag::JoinReply as i32));
        (server, client)
    }
}

/// Asserts that `session` stays open until `deadline` and closes silently at it, timed out
/// after the idle timeout if `established`, else the handshake timeout.
fn assert_times_out_at(
    net: &mut Net,
    session: &mut dyn SessionCore,
    deadline: Millis,
    established: bool,
) {
    let after_ms = if established {
        TIMEOUTS.idle_ms
    } else {
        TIMEOUTS.handshake_ms
    };
    assert_eq!(session.poll_timeout(), Some(deadline));
    net.advance(session, deadline - 1);
    assert!(
        net.poll(&mut [&mut *session], 0).is_none(),
        "closed too early"
    );
    net.advance(session, deadline);
    assert_eq!(net.poll(&mut [&mut *session], 0), Some(None));
    assert_eq!(
        session.report().outcome,
        Outcome::TimedOut {
            established,
            after_ms
        }
    );
}

fn get_cluster_waiting(wait_ms: u32) -> XlRegMsg {
    XlRegMsg {
        wait_ms: Some(wait_ms),
        ..op(Tag::GetCluster)
    }
}

#[test]
fn a_hello_not_whole_within_the_handshake_timeout_closes_the_session_silently() {
    let mut net = Net::new();
    let mut server = net.server();
    assert_eq!(server.poll_timeout(), Some(TIMEOUTS.handshake_ms));
    // Half a hello arrives; its sender then stalls. The deadline does not move.
    server.on_bytes(&frame::encode(&[0u8; 256])[..100]);
    net.now = 5_000;
    assert!(net.poll(&mut [&mut server], 0).is_none());
    assert_times_out_at(&mut net, &mut server, TIMEOUTS.handshake_ms, false);
}

#[test]
fn a_session_silent_for_the_idle_timeout_after_a_reply_is_closed() {
    let mut net = Net::new();
    net.now = 500;
    let (mut server, mut client) = net.connect();
    // The hello was answered at 500: the client has until 60,500 for its first request.
    assert_eq!(server.poll_timeout(), Some(500 + TIMEOUTS.idle_ms));
    net.advance(&mut server, 30_000);
    let member = client.member(0, "idle");
    let reply = net.request(&mut [&mut server], &mut client, &member);
    assert_eq!(reply.unwrap().op, Some(Tag::MemberOk as i32));
    // Answered at 30,000: the silence is counted from there.
    let deadline = 30_000 + TIMEOUTS.idle_ms;
    assert_times_out_at(&mut net, &mut server, deadline, true);
}

#[test]
fn a_held_get_cluster_is_answered_when_a_join_from_another_session_completes_the_cluster() {
    let mut net = Net::new();
    let (mut waiter, mut waiter_client) = net.member_of(0, "a", "pair", 2);
    net.now = 1_000;
    let held = net.request(
        &mut [&mut waiter],
        &mut waiter_client,
        &get_cluster_waiting(5_000),
    );
    assert!(held.is_none(), "slot 1 is empty: the reply must be held");
    assert_eq!(waiter.poll_timeout(), Some(6_000));
    assert!(!waiter.is_idle());

    // Another session joins the pair at 2,000, well before the wait ends.
    net.now = 2_000;
    let (mut joiner, mut joiner_client) = net.connect();
    let member = joiner_client.member(1, "b");
    net.request(&mut [&mut joiner], &mut joiner_client, &member);
    let join = XlRegMsg {
        cluster_name: Some("pair".into()),
        ..op(Tag::Join)
    };
    let reply = net
        .request(&mut [&mut joiner, &mut waiter], &mut joiner_client, &join)
        .unwrap();
    assert_eq!(reply.slot, Some(1));

    // The waiter is answered now, at 2,000, with both members.
    let (bytes, close) = net
        .poll(&mut [&mut waiter], 0)
        .expect("the join must wake the waiter")
        .unwrap();
    assert!(!close);
    let members = waiter_client.open(&bytes);
    assert_eq!(members.which, Some(0b11));
    assert_eq!(members.tokens.len(), 2);
    // The wait is over: the idle deadline runs from the reply.
    assert_eq!(waiter.poll_timeout(), Some(2_000 + TIMEOUTS.idle_ms));
}

#[test]
fn a_change_that_leaves_the_cluster_incomplete_keeps_the_reply_held() {
    let mut net = Net::new();
    let (mut waiter, mut waiter_client) = net.member_of(0, "a", "trio", 3);
    let held = net.request(
        &mut [&mut waiter],
        &mut waiter_client,
        &get_cluster_waiting(5_000),
    );
    assert!(held.is_none());
    let (mut joiner, mut joiner_client) = net.connect();
    let member = joiner_client.member(1, "b");
    net.request(&mut [&mut joiner], &mut joiner_client, &member);
    let join = XlRegMsg {
        cluster_name: Some("trio".into()),
        ..op(Tag::Join)
    };
    net.request(&mut [&mut joiner, &mut waiter], &mut joiner_client, &join);
    // Woken, the waiter reads the cluster again, finds slot 2 empty and keeps waiting.
    assert!(net.poll(&mut [&mut waiter], 0).is_none());
    assert_eq!(waiter.poll_timeout(), Some(5_000));
    // When the wait ends, the reply holds what is there.
    net.advance(&mut waiter, 5_000);
    let (bytes, _) = net.poll(&mut [&mut waiter], 0).unwrap().unwrap();
    let members = waiter_client.open(&bytes);
    assert_eq!(members.which, Some(0b011));
}

#[test]
fn a_held_get_cluster_is_answered_with_what_is_there_when_the_wait_expires() {
    let mut net = Net::new();
    let (mut waiter, mut client) = net.member_of(0, "a", "pair", 2);
    net.now = 1_000;
    assert!(net
        .request(&mut [&mut waiter], &mut client, &get_cluster_waiting(5_000))
        .is_none());
    net.advance(&mut waiter, 5_999);
    assert!(
        net.poll(&mut [&mut waiter], 0).is_none(),
        "answered too early"
    );
    net.advance(&mut waiter, 6_000);
    let (bytes, close) = net.poll(&mut [&mut waiter], 0).unwrap().unwrap();
    assert!(!close);
    let members = client.open(&bytes);
    assert_eq!(members.op, Some(Tag::ClusterMembers as i32));
    assert_eq!(members.which, Some(0b01));
    assert_eq!(members.tokens.len(), 1);
}

#[test]
fn shutdown_answers_a_held_get_cluster_at_once_and_speaking_while_held_drops_the_session() {
    let mut net = Net::new();
    let (mut waiter, mut client) = net.member_of(0, "a", "pair", 2);
    let held = net.request(
        &mut [&mut waiter],
        &mut client,
        &get_cluster_waiting(60_000),
    );
    assert!(held.is_none());
    waiter.on_shutdown();
    let (bytes, _) = net.poll(&mut [&mut waiter], 0).unwrap().unwrap();
    assert_eq!(client.open(&bytes).which, Some(0b01));
    assert!(waiter.is_idle(), "answered: shutdown may close it now");

    // In lock-step a client says nothing while its reply is held.
    let (mut waiter, mut client) = net.member_of(1, "b", "other", 2);
    let held = net.request(
        &mut [&mut waiter],
        &mut client,
        &get_cluster_waiting(60_000),
    );
    assert!(held.is_none());
    waiter.on_bytes(&client.seal(&op(Tag::Bye)));
    assert_eq!(net.poll(&mut [&mut waiter], 0), Some(None));
    assert_eq!(waiter.report().outcome, Outcome::Dropped);
}

/// The client side of one xlReg 1.9 session, no I/O.
struct LegacyClient {
    key: [u8; AES_KEY_LEN],
}

fn legacy_server(now: Millis) -> LegacySession {
    LegacySession::new(
        keys().decryptor.clone(),
        Version::GO_REGISTRY,
        StdRng::seed_from_u64(now),
        64 * 1024,
        TIMEOUTS,
        now,
    )
}

fn legacy_connect(net: &mut Net) -> (LegacySession, LegacyClient) {
    let mut server = legacy_server(net.now);
    let hello = Hello {
        key: zeroize::Zeroizing::new([3u8; AES_KEY_LEN]),
        salt: [4u8; wire::SALT_LEN],
        version: Version([0; 4]),
    };
    server.on_bytes(&wire::seal_hello(keys().registry.public_key(), &hello).unwrap());
    let (reply, close) = net.poll(&mut [&mut server], 0).unwrap().unwrap();
    assert!(!close);
    let reply = wire::open_reply(&hello.key, &reply).unwrap();
    (server, LegacyClient { key: *reply.key })
}

#[test]
fn a_1_9_hello_not_whole_within_the_handshake_timeout_closes_the_session_silently() {
    let mut net = Net::new();
    let mut server = legacy_server(0);
    server.on_bytes(&[0u8; 100]);
    assert_times_out_at(&mut net, &mut server, TIMEOUTS.handshake_ms, false);
}

#[test]
fn a_1_9_session_is_closed_after_the_idle_timeout_or_told_its_partial_message_is_undecodable() {
    let mut net = Net::new();
    net.now = 200;
    let (mut server, _client) = legacy_connect(&mut net);
    let deadline = 200 + TIMEOUTS.idle_ms;
    assert_times_out_at(&mut net, &mut server, deadline, true);

    // Bytes that never form a message: an Error when the idle timeout passes.
    net.now = 0;
    let (mut server, client) = legacy_connect(&mut net);
    server.on_bytes(&[0x5Au8; 48]);
    assert!(net.poll(&mut [&mut server], 0).is_none());
    net.advance(&mut server, TIMEOUTS.idle_ms);
    let (bytes, close) = net.poll(&mut [&mut server], 0).unwrap().unwrap();
    assert!(close);
    let error = wire::open_message(&client.key, &bytes).unwrap();
    assert!(error.err_desc.unwrap().contains("do not decrypt"));
}

/// The registry's xlReg/3 handshake keys (made once: X25519 and ML-KEM-768 key generation
/// takes well under a millisecond).
fn handshake_keys() -> &'static Arc<xlreg::crypto::HandshakeKeyPair> {
    static KEYS: OnceLock<Arc<xlreg::crypto::HandshakeKeyPair>> = OnceLock::new();
    KEYS.get_or_init(|| Arc::new(xlreg::crypto::HandshakeKeyPair::generate().unwrap()))
}

#[test]
fn an_xlreg3_first_message_not_whole_within_the_handshake_timeout_closes_the_session_silently() {
    let mut net = Net::new();
    let mut server = net.server().with_v3(handshake_keys().clone());
    let (_, hello) = xlreg::session_crypto::ClientHandshakeV3::start(
        handshake_keys().public(),
        &mut StdRng::seed_from_u64(3),
    )
    .unwrap();
    // All but the last byte of the first message arrives at 9,000; the deadline stays 10,000.
    let whole = frame::encode(&hello);
    server.on_bytes(&whole[..whole.len() - 1]);
    net.now = 9_000;
    assert!(net.poll(&mut [&mut server], 0).is_none());
    assert_times_out_at(&mut net, &mut server, TIMEOUTS.handshake_ms, false);
}

#[test]
fn an_xlreg3_session_silent_for_the_idle_timeout_after_its_handshake_is_closed() {
    let mut net = Net::new();
    net.now = 700;
    let mut server = net.server().with_v3(handshake_keys().clone());
    let (handshake, hello) = xlreg::session_crypto::ClientHandshakeV3::start(
        handshake_keys().public(),
        &mut StdRng::seed_from_u64(4),
    )
    .unwrap();
    server.on_bytes(&frame::encode(&hello));
    let (reply, close) = net.poll(&mut [&mut server], 0).unwrap().unwrap();
    assert!(!close);
    handshake.finish(&payload(&reply)).unwrap();
    assert_eq!(server.version(), Some(3));
    // Answered at 700: the client has until 60,700 for its first request.
    assert_times_out_at(&mut net, &mut server, 700 + TIMEOUTS.idle_ms, true);
}
