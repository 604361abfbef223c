//! Property tests of the protocol core and the message handlers: any sequence of messages
//! (arbitrary fields, admission fields of any size among them, arbitrary bytes, properly signed
//! Members, Leaves) fed to a `ServerSession` over a fresh store never panics, every reply the
//! session produces is a sealed, decodable message, and the store always verifies clean.

use std::sync::{Arc, OnceLock};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use xlreg::crypto::{HelloDecryptor, RsaKeyPair};

include!("data/fixture_keys.rs");
use xlreg::driver::poll_applying;
use xlreg::frame::{self, FrameDecoder};
use xlreg::proto::{JoinToken, Tag, XlRegMsg, XlRegToken};
use xlreg::protocol::ServerSession;
use xlreg::session::{SessionCore as _, Step, Timeouts};
use xlreg::session_crypto::{ClientHandshake, Role, SessionCipher};
use xlreg::store::Store;
use xlreg::token::{self, TokenFields};

/// The registry's key and two members' key pairs, made once (RSA key generation is slow).
struct Keys {
    registry: RsaKeyPair,
    decryptor: Arc<HelloDecryptor>,
    members: Vec<RsaKeyPair>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // Committed test-only keys: loading one takes microseconds, generating one far more.
        let registry = fixture_key(0);
        let decryptor = Arc::new(registry.hello_decryptor().unwrap());
        let members = (1..3).map(fixture_key).collect();
        Keys {
            registry,
            decryptor,
            members,
        }
    })
}

/// One thing a client sends.
#[derive(Debug, Clone)]
enum Input {
    /// A Member whose token is signed for the session, with these fields.
    SignedMember {
        key: usize,
        name: String,
        id: Option<Vec<u8>>,
        endpoints: Vec<String>,
    },
    /// Any message.
    Message(Box<XlRegMsg>),
    /// Any bytes, sealed.
    Sealed(Vec<u8>),
    /// Any bytes, not sealed (must close the session).
    Unsealed(Vec<u8>),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{1,2}",
        "[a-zA-Z_][a-zA-Z0-9_.-]{0,70}",
        any::<String>(),
        Just(String::new()),
    ]
}

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        "127\\.0\\.0\\.1:[0-9]{1,5}",
        "[a-z]{1,10}:[0-9]{1,6}",
        "\\[::1\\]:[0-9]{1,5}",
        any::<String>(),
    ]
}

fn id_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 32),
        vec(any::<u8>(), 20),
        vec(any::<u8>(), 0..40)
    ]
}

fn token() -> impl Strategy<Value = XlRegToken> {
    (
        option::of(name()),
        option::of(any::<u64>()),
        option::of(id_bytes()),
        option::of(vec(any::<u8>(), 0..300)),
        option::of(vec(any::<u8>(), 0..300)),
        vec(endpoint(), 0..10),
        option::of(vec(any::<u8>(), 0..300)),
    )
        .prop_map(
            |(name, attrs, id, comms_key, sig_key, my_ends, dig_sig)| XlRegToken {
                name,
                attrs,
                id,
                comms_key,
                sig_key,
                my_ends,
                dig_sig,
            },
        )
}

/// Admission fields (docs/protocol.md section 14) of any size and content: owner key and
/// proof, open, a token spec, a token id and proof, a member id.
fn with_admission_fields(base: impl Strategy<Value = XlRegMsg>) -> impl Strategy<Value = XlRegMsg> {
    let spec = (
        option::of(prop_oneof!["[a-z0-9]{1,16}", any::<String>()]),
        option::of(vec(any::<u8>(), 0..40)),
        option::of(prop_oneof![0u32..4, any::<u32>()]),
        option::of(any::<u64>()),
        option::of(any::<u32>()),
    )
        .prop_map(|(id, verifier_key, usages, ttl_ms, uses)| JoinToken {
            id,
            verifier_key,
            usages,
            ttl_ms,
            uses,
            ..JoinToken::default()
        });
    (
        base,
        option::of(vec(any::<u8>(), 0..40)),
        option::of(vec(any::<u8>(), 60..68)),
        option::of(any::<bool>()),
        option::of(spec),
        option::of(prop_oneof!["[a-z0-9]{1,17}", any::<String>()]),
        option::of(vec(any::<u8>(), 60..68)),
        option::of(id_bytes()),
    )
        .prop_map(
            |(mut msg, owner_key, owner_sig, open, new_token, token_id, token_proof, member_id)| {
                msg.owner_key = owner_key;
                msg.owner_sig = owner_sig;
                msg.open = open;
                msg.new_token = new_token;
                msg.token_id = token_id;
                msg.token_proof = token_proof;
                msg.member_id = member_id.or(msg.member_id);
                msg
            },
        )
}

fn message() -> impl Strategy<Value = XlRegMsg> {
    with_admission_fields(message_without_admission())
}

fn message_without_admission() -> impl Strategy<Value = XlRegMsg> {
    (
        option::of(prop_oneof![1i32..=22, any::<i32>()]),
        option::of(token()),
        option::of(id_bytes()),
        option::of(name()),
        option::of(prop_oneof![0u32..=70, any::<u32>()]),
        option::of(0u32..=10),
        option::of(any::<u64>()),
        option::of(0u32..=3),
        vec(token(), 0..2),
        option::of(any::<String>()),
    )
        .prop_map(
            |(
                op,
                member_specs,
                cluster_id,
                cluster_name,
                size,
                endpoints,
                which,
                wait,
                tokens,
                err,
            )| {
                XlRegMsg {
                    op,
                    member_specs,
                    cluster_id,
                    cluster_name,
                    cluster_max_size: size,
                    end_point_count: endpoints,
                    which,
                    wait_ms: wait,
                    tokens,
                    err_desc: err,
                    ..XlRegMsg::default()
                }
            },
        )
}

fn signed_member() -> impl Strategy<Value = Input> {
    let endpoints = prop_oneof![
        9 => vec("127\\.0\\.0\\.1:[1-9][0-9]{0,3}", 1..3),
        1 => vec(endpoint(), 0..10),
    ];
    (
        0usize..2,
        "[a-c]{1,2}",
        option::weighted(0.2, id_bytes()),
        endpoints,
    )
        .prop_map(|(key, name, id, endpoints)| Input::SignedMember {
            key,
            name,
            id,
            endpoints,
        })
}

/// A mostly well-formed request on a few cluster names, so that creates, joins (up to full
/// clusters) and listings happen often.
fn request() -> impl Strategy<Value = Input> {
    (
        prop_oneof![
            5 => Just(Tag::Create),
            4 => Just(Tag::Join),
            2 => Just(Tag::GetCluster),
            2 => Just(Tag::Leave),
            1 => Just(Tag::Bye),
        ],
        option::weighted(0.9, "[ab]"),
        option::weighted(0.9, 0u32..6),
        option::weighted(0.3, 0u32..4),
        option::weighted(0.3, any::<u64>()),
        option::weighted(0.2, 0u32..3),
    )
        .prop_map(|(tag, name, size, endpoints, which, wait)| {
            Input::Message(Box::new(XlRegMsg {
                op: Some(tag as i32),
                cluster_name: name,
                cluster_max_size: size,
                end_point_count: endpoints,
                which,
                wait_ms: wait,
                ..XlRegMsg::default()
            }))
        })
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => signed_member(),
        12 => request(),
        2 => message().prop_map(|m| Input::Message(Box::new(m))),
        1 => vec(any::<u8>(), 0..200).prop_map(Input::Sealed),
        1 => vec(any::<u8>(), 0..300).prop_map(Input::Unsealed),
    ]
}

/// A session: usually a signed Member first, then anything.
fn session() -> impl Strategy<Value = Vec<Input>> {
    (option::weighted(0.85, signed_member()), vec(input(), 0..10))
        .prop_map(|(first, rest)| first.into_iter().chain(rest).collect())
}

/// The plaintext a client would seal for `input`, given the session's salt.
fn plaintext(input: &Input, salt: &[u8]) -> Option<Vec<u8>> {
    match input {
        Input::SignedMember {
            key,
            name,
            id,
            endpoints,
        } => {
            let pair = &keys().members[*key];
            let der = pair.public_key().to_spki_der();
            let fields = TokenFields {
                id: id.as_deref(),
                name,
                attrs: 0,
                comms_key: der,
                sig_key: der,
                endpoints,
            };
            let msg = XlRegMsg {
                op: Some(Tag::Member as i32),
                member_specs: Some(token::sign_v2(&fields, pair, salt).unwrap()),
                ..XlRegMsg::default()
            };
            Some(msg.encode_to_vec())
        }
        Input::Message(msg) => Some(msg.encode_to_vec()),
        Input::Sealed(bytes) => Some(bytes.clone()),
        Input::Unsealed(_) => None,
    }
}

const TIMEOUTS: Timeouts = Timeouts {
    handshake_ms: 10_000,
    idle_ms: 60_000,
};

fn new_session(seed: u64) -> ServerSession {
    let rng = StdRng::seed_from_u64(seed);
    ServerSession::new(keys().decryptor.clone(), rng, 64 * 1024, TIMEOUTS, 1_000)
}

/// The payload of the one frame in `bytes`.
fn payload(bytes: &[u8]) -> Vec<u8> {
    let mut decoder = FrameDecoder::new(frame::MAX_FRAME_LEN);
    decoder.push(bytes);
    decoder.next_frame().unwrap().unwrap()
}

/// Runs one session over `inputs`; returns how many replies it produced.
fn run_session(store: &Store, inputs: &[Input]) -> Result<usize, TestCaseError> {
    let keys = keys();
    let mut session = new_session(1);
    let (handshake, hello) = ClientHandshake::start(keys.registry.public_key()).unwrap();
    session.on_bytes(&frame::encode(&hello));
    let Some(Step::Send { bytes, .. }) = poll_applying(&mut session, store, 1_000) else {
        return Err(TestCaseError::fail("the hello was not answered"));
    };
    let session_keys = handshake.finish(&payload(&bytes)).unwrap();
    let mut cipher = SessionCipher::new(&session_keys.key, Role::Client);
    let mut replies = 0;
    for input in inputs {
        let frame = match plaintext(input, &session_keys.server_salt) {
            Some(plaintext) => cipher.seal(&plaintext),
            None => match input {
                Input::Unsealed(bytes) => bytes.clone(),
                _ => unreachable!(),
            },
        };
        session.on_bytes(&frame::encode(&frame));
        let mut step = poll_applying(&mut session, store, 1_000);
        if let Some(Step::Watch(_)) = step {
            // The driver would wait for a change or the deadline: take the deadline.
            let deadline = session
                .poll_timeout()
                .ok_or_else(|| TestCaseError::fail("a held reply has no deadline"))?;
            session.on_timeout(deadline);
            step = poll_applying(&mut session, store, deadline);
        }
        match step {
            Some(Step::Send { bytes, close, .. }) => {
                let reply = cipher
                    .open(&payload(&bytes))
                    .map_err(|_| TestCaseError::fail("a reply does not authenticate"))?;
                XlRegMsg::decode(reply.as_slice())
                    .map_err(|e| TestCaseError::fail(format!("a reply does not decode: {e}")))?;
                replies += 1;
                if close {
                    break;
                }
            }
            Some(Step::Close) => {
                prop_assert!(
                    !matches!(input, Input::Message(_) | Input::SignedMember { .. }),
                    "an authentic message was dropped without a reply: {input:?}"
                );
                break;
            }
            None | Some(Step::Watch(_)) => {
                return Err(TestCaseError::fail("no reply after the deadline"))
            }
            Some(Step::Read(_) | Step::Write(_)) => {
                return Err(TestCaseError::fail(
                    "a store operation was left to the test",
                ))
            }
        }
    }
    Ok(replies)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_messages_never_panic_and_leave_the_store_verifying_clean(
        sessions in vec(session(), 1..8),
    ) {
        let store = Store::temporary().unwrap();
        for inputs in &sessions {
            run_session(&store, inputs)?;
            let problems = store.verify().unwrap();
            prop_assert!(problems.is_empty(), "{problems:?}");
        }
    }

    #[test]
    fn any_bytes_as_a_hello_are_closed_without_a_reply(hello in vec(any::<u8>(), 0..600)) {
        let store = Store::temporary().unwrap();
        let mut session = new_session(2);
        session.on_bytes(&frame::encode(&hello));
        prop_assert!(matches!(poll_applying(&mut session, &store, 1_000), Some(Step::Close)));
        session.on_bytes(&frame::encode(&hello));
        prop_assert!(matches!(poll_applying(&mut session, &store, 1_000), Some(Step::Close)));
    }
}
