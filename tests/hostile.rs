//! Hostile input against a real `xlreg serve`: every case states the outcome it expects (a
//! silent close, or an Error of a given class with a clear text), and each test then checks
//! that the registry still serves a normal session and that its store is unchanged.
//!
//! The two hostile inputs of the legacy 1.9 listener (ciphertext that is not a whole number
//! of blocks, or shorter than one block) belong to that listener (issue 4) and its tests.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{member_msg, node, store_contents, RawConn, RawSession, Server, StoreContents};
use xlreg::crypto::{random_array, RsaKeyPair};
use xlreg::frame::{self, LENGTH_PREFIX_LEN};
use xlreg::id::Id;
use xlreg::node::NodeIdentity;
use xlreg::proto::{ErrCode, Tag, XlRegMsg, XlRegToken};
use xlreg::session_crypto::ClientHandshake;
use xlreg::store::ClusterRef;
use xlreg::token::{self, TokenFields};

/// Timeouts far beyond [`common::HEAR_TIMEOUT`]: a close the tests see is never a timeout.
const SERVE_ARGS: &[&str] = &["--handshake-timeout", "120", "--idle-timeout", "120"];

/// A registry holding two nodes, "alpha" in cluster "base" (3 slots) and "mallory" in no
/// cluster, and the store's contents at that point.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    server: Server,
    alpha: NodeIdentity,
    mallory: NodeIdentity,
    before: StoreContents,
}

impl Fixture {
    async fn start() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let server = Server::start(&dir, SERVE_ARGS);
        let mut alpha = node(0, "alpha", 1);
        let mut client = server.client().await;
        alpha.id = Some(client.register(&alpha).await.unwrap());
        client.create("base", 3, 1).await.unwrap();
        client.join(None).await.unwrap();
        client.bye().await.unwrap();
        let mut mallory = node(1, "mallory", 1);
        let mut client = server.client().await;
        mallory.id = Some(client.register(&mallory).await.unwrap());
        client.bye().await.unwrap();
        assert_eq!(server.stop(), Some(0));
        let before = store_contents(&dir);
        let server = Server::start(&dir, SERVE_ARGS);
        Fixture {
            _tmp: tmp,
            dir,
            server,
            alpha,
            mallory,
            before,
        }
    }

    /// A raw session registered as mallory (a known node: the store does not change).
    async fn registered(&self) -> RawSession {
        let mut session = RawSession::open(&self.server).await;
        let id = session.register(&self.mallory).await;
        assert_eq!(Some(&id), self.mallory.id.as_ref());
        session
    }

    /// A normal session still works: alpha re-registers (unchanged) and lists its cluster.
    async fn still_serves(&mut self) {
        self.server.assert_running();
        let mut client = self.server.client().await;
        let id = client.register(&self.alpha).await.unwrap();
        assert_eq!(Some(&id), self.alpha.id.as_ref());
        let view = client
            .get_cluster(Some(&ClusterRef::Name("base".into())), None, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(view.which, 0b1);
        assert_eq!(view.members[0].id, id);
        client.bye().await.unwrap();
    }

    /// Checks the registry still serves and never panicked, stops it (it must exit cleanly) and returns the
    /// store's contents.
    async fn finish(mut self) -> (StoreContents, StoreContents) {
        self.still_serves().await;
        // A panic in a session task would not stop the process: look for it in the log.
        let log = self.server.log_text();
        assert!(!log.contains("panicked"), "the registry panicked:\n{log}");
        assert_eq!(
            self.server.stop(),
            Some(0),
            "the registry did not exit cleanly"
        );
        (store_contents(&self.dir), self.before)
    }

    /// As [`Fixture::finish`], and the store must be exactly as before the hostile input.
    async fn finish_unchanged(self) {
        let (after, before) = self.finish().await;
        after.assert_unchanged_since(&before);
    }
}

/// A message with only an op.
fn op(tag: Tag) -> XlRegMsg {
    XlRegMsg {
        op: Some(tag as i32),
        ..XlRegMsg::default()
    }
}

#[tokio::test]
async fn garbage_before_and_after_the_handshake_is_closed_silently() {
    let fixture = Fixture::start().await;
    let endpoint = fixture.server.endpoint();

    // Each case: (what, bytes to send, half-close afterwards). Expected: closed, no reply.
    let oversize = (64 * 1024 + 1) as u32;
    let mut truncated = frame::encode(&random_array::<300>());
    truncated.truncate(LENGTH_PREFIX_LEN + 100);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "random bytes as a hello frame",
            frame::encode(&random_array::<256>()),
            false,
        ),
        (
            "random bytes, not framed",
            random_array::<700>().to_vec(),
            true,
        ),
        ("a truncated frame", truncated, true),
        ("half a length prefix", vec![0, 0], true),
        (
            "a length prefix of 4 GiB",
            u32::MAX.to_be_bytes().to_vec(),
            false,
        ),
        (
            "a length prefix over --max-frame",
            oversize.to_be_bytes().to_vec(),
            false,
        ),
        ("an empty hello frame", frame::encode(&[]), false),
        (
            "a hello one byte short",
            frame::encode(&random_array::<255>()),
            false,
        ),
    ];
    for (case, bytes, half_close) in cases {
        let mut conn = RawConn::connect(&endpoint).await;
        conn.send_raw(&bytes).await.unwrap();
        if half_close {
            conn.half_close().await;
        }
        conn.expect_silent_close(case).await;
    }

    // A well-formed hello under another registry's key.
    // A test-only fixture key that is not the template registry's.
    let stranger = common::key_pair(15).0;
    let (_, hello) = ClientHandshake::start(stranger.public_key()).unwrap();
    let mut conn = RawConn::connect(&endpoint).await;
    conn.send_frame(&hello).await.unwrap();
    conn.expect_silent_close("a hello under the wrong key")
        .await;

    // The same inside an established session.
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "a truncated session frame",
            vec![0, 0, 0, 100, 1, 2, 3],
            true,
        ),
        (
            "a 4 GiB session frame",
            u32::MAX.to_be_bytes().to_vec(),
            false,
        ),
        ("an empty session frame", frame::encode(&[]), false),
        (
            "random bytes as a session frame",
            frame::encode(&random_array::<64>()),
            false,
        ),
    ];
    for (case, bytes, half_close) in cases {
        let mut session = RawSession::open(&fixture.server).await;
        session.conn.send_raw(&bytes).await.unwrap();
        if half_close {
            session.conn.half_close().await;
        }
        session.conn.expect_silent_close(case).await;
    }

    // A message larger than --max-frame (64 KiB) once sealed.
    let mut session = RawSession::open(&fixture.server).await;
    let huge = XlRegMsg {
        cluster_name: Some("x".repeat(70_000)),
        ..op(Tag::Create)
    };
    // The registry may hang up before it has read all of it: a failed send is fine.
    let _ = session.send(&huge).await;
    session.conn.expect_silent_close("a 70 KB message").await;

    fixture.finish_unchanged().await;
}

#[tokio::test]
async fn replayed_altered_reordered_and_foreign_frames_are_closed_silently() {
    let fixture = Fixture::start().await;
    let member = |s: &RawSession| s.member_msg(&fixture.mallory);

    // Replay: the first copy is answered, the second fails authentication.
    let mut session = RawSession::open(&fixture.server).await;
    let msg = member(&session);
    let sealed = session.seal(&prost::Message::encode_to_vec(&msg));
    session.conn.send_frame(&sealed).await.unwrap();
    let reply = session.recv().await;
    assert_eq!(reply.op, Some(Tag::MemberOk as i32));
    session.conn.send_frame(&sealed).await.unwrap();
    session
        .conn
        .expect_silent_close("a replayed session frame")
        .await;

    // A single bit flipped anywhere: in the first byte, the middle, the tag's last byte.
    for position in ["first", "middle", "last"] {
        let mut session = RawSession::open(&fixture.server).await;
        let msg = member(&session);
        let mut sealed = session.seal(&prost::Message::encode_to_vec(&msg));
        let at = match position {
            "first" => 0,
            "middle" => sealed.len() / 2,
            _ => sealed.len() - 1,
        };
        sealed[at] ^= 0x10;
        session.conn.send_frame(&sealed).await.unwrap();
        session
            .conn
            .expect_silent_close(&format!("a bit flipped in the {position} byte"))
            .await;
    }

    // Reordered: the second message sealed arrives first.
    let mut session = RawSession::open(&fixture.server).await;
    let msg = member(&session);
    let _first = session.seal(&prost::Message::encode_to_vec(&msg));
    let second = session.seal(&prost::Message::encode_to_vec(&op(Tag::Bye)));
    session.conn.send_frame(&second).await.unwrap();
    session
        .conn
        .expect_silent_close("a reordered session frame")
        .await;

    // A frame sealed in another session (same registry, another key).
    let mut other = RawSession::open(&fixture.server).await;
    let msg = member(&other);
    let foreign = other.seal(&prost::Message::encode_to_vec(&msg));
    let mut session = RawSession::open(&fixture.server).await;
    session.conn.send_frame(&foreign).await.unwrap();
    session
        .conn
        .expect_silent_close("a frame from another session")
        .await;

    // The registry's own handshake reply sent back to it as a session frame.
    let mut conn = RawConn::connect(&fixture.server.endpoint()).await;
    let (_, hello) = ClientHandshake::start(&fixture.server.regcred.comms_key).unwrap();
    conn.send_frame(&hello).await.unwrap();
    let common::Heard::Frame(reply) = conn.hear().await else {
        panic!("no handshake reply")
    };
    conn.send_frame(&reply).await.unwrap();
    conn.expect_silent_close("the handshake reply reflected back")
        .await;

    // The hello sent twice: the second is a session frame that does not authenticate.
    let mut conn = RawConn::connect(&fixture.server.endpoint()).await;
    conn.send_frame(&hello).await.unwrap();
    let common::Heard::Frame(_) = conn.hear().await else {
        panic!("no handshake reply")
    };
    conn.send_frame(&hello).await.unwrap();
    conn.expect_silent_close("a replayed hello").await;

    fixture.finish_unchanged().await;
}

#[tokio::test]
async fn messages_out_of_order_get_invalid_state_and_nothing_follows_bye() {
    let fixture = Fixture::start().await;

    for tag in [Tag::Create, Tag::Join, Tag::GetCluster] {
        let mut session = RawSession::open(&fixture.server).await;
        let msg = XlRegMsg {
            cluster_name: Some("base".into()),
            cluster_max_size: Some(3),
            ..op(tag)
        };
        session.send(&msg).await.unwrap();
        let case = format!("{} before Member", tag.as_str_name());
        session
            .expect_error(
                &case,
                ErrCode::InvalidState,
                &format!(
                    "{} is not allowed now: send Member first",
                    tag.as_str_name()
                ),
            )
            .await;
    }

    // Member twice.
    let mut session = fixture.registered().await;
    let again = session.member_msg(&fixture.mallory);
    session.send(&again).await.unwrap();
    session
        .expect_error(
            "Member twice",
            ErrCode::InvalidState,
            "Member was already sent in this session",
        )
        .await;

    // After Bye: the Ack, then the connection closes; a message sent in the same write as
    // the Bye is never answered, and one sent after the Ack finds the connection closed.
    for tag in [Tag::Member, Tag::Join, Tag::Bye, Tag::Create] {
        let mut session = fixture.registered().await;
        let bye = session.seal(&prost::Message::encode_to_vec(&op(Tag::Bye)));
        let next = session.seal(&prost::Message::encode_to_vec(&XlRegMsg {
            cluster_name: Some("base".into()),
            cluster_max_size: Some(3),
            ..op(tag)
        }));
        let mut both = frame::encode(&bye);
        both.extend(frame::encode(&next));
        session.conn.send_raw(&both).await.unwrap();
        let ack = session.recv().await;
        assert_eq!(ack.op, Some(Tag::Ack as i32));
        session
            .conn
            .expect_silent_close(&format!("{} pipelined after Bye", tag.as_str_name()))
            .await;
    }
    let mut session = fixture.registered().await;
    assert_eq!(session.call(&op(Tag::Bye)).await.op, Some(Tag::Ack as i32));
    // The registry may already have closed: the send may fail, and nothing is answered.
    let _ = session.send(&op(Tag::GetCluster)).await;
    session
        .conn
        .expect_silent_close("GetCluster after the Ack")
        .await;

    // Speaking while a GetCluster reply is held breaks lock-step: dropped silently.
    let mut session = fixture.registered().await;
    session
        .send(&XlRegMsg {
            cluster_name: Some("base".into()),
            wait_ms: Some(60_000),
            ..op(Tag::GetCluster)
        })
        .await
        .unwrap();
    session.send(&op(Tag::Bye)).await.unwrap();
    session
        .conn
        .expect_silent_close("a message while a GetCluster is held")
        .await;

    fixture.finish_unchanged().await;
}

#[tokio::test]
async fn malformed_messages_and_server_only_ops_get_bad_request() {
    let fixture = Fixture::start().await;

    // Raw protobuf bytes the message type cannot hold.
    let not_a_message: Vec<(&str, Vec<u8>)> = vec![
        ("bytes that are not protobuf", vec![0xff; 40]),
        ("a truncated varint", vec![0x08, 0x80]),
        ("Op as a length-delimited field", vec![0x0a, 0x01, 0x03]),
        (
            "ClusterMaxSize as a length-delimited field",
            vec![0x08, 0x05, 0x7a, 0x01, 0x03],
        ),
        ("MemberSpecs as a varint", vec![0x08, 0x03, 0x58, 0x01]),
        (
            "ClusterName not UTF-8",
            vec![0x08, 0x05, 0x72, 0x02, 0xff, 0xfe],
        ),
        (
            "token Name not UTF-8",
            vec![0x08, 0x03, 0x5a, 0x04, 0x0a, 0x02, 0xc3, 0x28],
        ),
        (
            "an endpoint not UTF-8",
            vec![0x08, 0x03, 0x5a, 0x03, 0x32, 0x01, 0x80],
        ),
        ("a length past the end", vec![0x08, 0x05, 0x72, 0x7f, b'a']),
    ];
    for (case, bytes) in not_a_message {
        let mut session = RawSession::open(&fixture.server).await;
        session.send_plain(&bytes).await.unwrap();
        session
            .expect_error(case, ErrCode::BadRequest, "message is not a valid XLRegMsg")
            .await;
    }

    let mut session = RawSession::open(&fixture.server).await;
    session.send(&XlRegMsg::default()).await.unwrap();
    session
        .expect_error(
            "a message with no op",
            ErrCode::BadRequest,
            "message has no Op",
        )
        .await;
    let mut session = RawSession::open(&fixture.server).await;
    session.send_plain(&[]).await.unwrap();
    session
        .expect_error("an empty message", ErrCode::BadRequest, "message has no Op")
        .await;
    let mut session = RawSession::open(&fixture.server).await;
    session
        .send(&XlRegMsg {
            op: Some(99),
            ..XlRegMsg::default()
        })
        .await
        .unwrap();
    session
        .expect_error("op 99", ErrCode::BadRequest, "unknown Op 99")
        .await;

    // Every registry-only op, before and after Member.
    let replies = [
        Tag::Error,
        Tag::Ack,
        Tag::MemberOk,
        Tag::CreateReply,
        Tag::JoinReply,
        Tag::ClusterMembers,
        Tag::RegCredReply,
    ];
    for (i, tag) in replies.into_iter().enumerate() {
        let mut session = if i % 2 == 0 {
            RawSession::open(&fixture.server).await
        } else {
            fixture.registered().await
        };
        let msg = XlRegMsg {
            err_desc: Some("I am the registry now".into()),
            cluster_name: Some("base".into()),
            ..op(tag)
        };
        session.send(&msg).await.unwrap();
        let case = format!("{} sent by a client", tag.as_str_name());
        session
            .expect_error(
                &case,
                ErrCode::BadRequest,
                &format!("{} is a registry reply, not a request", tag.as_str_name()),
            )
            .await;
    }
    let mut session = RawSession::open(&fixture.server).await;
    session.send(&op(Tag::RegCredRequest)).await.unwrap();
    session
        .expect_error(
            "RegCredRequest",
            ErrCode::BadRequest,
            "RegCredRequest is not supported; read regCred.dat",
        )
        .await;

    fixture.finish_unchanged().await;
}

/// A token for `node` with `edit` applied to its fields before signing with `signer` for
/// the session salt `salt`: every defect but the one under test is absent.
fn crafted_token(
    node: &NodeIdentity,
    salt: &[u8],
    signer: &RsaKeyPair,
    edit: impl FnOnce(&mut XlRegToken),
) -> XlRegToken {
    let mut token = XlRegToken {
        name: Some(node.name.clone()),
        attrs: Some(0),
        id: node.id.as_ref().map(|id| id.as_bytes().to_vec()),
        comms_key: Some(node.comms.public_key().to_spki_der().to_vec()),
        sig_key: Some(node.sig.public_key().to_spki_der().to_vec()),
        my_ends: node.endpoints.clone(),
        dig_sig: None,
    };
    edit(&mut token);
    let fields = TokenFields {
        id: token.id.as_deref(),
        name: token.name.as_deref().unwrap_or_default(),
        attrs: token.attrs.unwrap_or(0),
        comms_key: token.comms_key.as_deref().unwrap_or_default(),
        sig_key: token.sig_key.as_deref().unwrap_or_default(),
        endpoints: &token.my_ends,
    };
    let signed = token::sign_v2(&fields, signer, salt).unwrap();
    XlRegToken {
        dig_sig: signed.dig_sig,
        ..token
    }
}

type TokenEdit = Box<dyn FnOnce(&mut XlRegToken)>;
type TokenMaker<'a> = Box<dyn Fn(&RawSession) -> XlRegToken + 'a>;

/// `node`'s token for this session, with its signature removed.
fn unsigned_token(session: &RawSession, node: &NodeIdentity) -> XlRegToken {
    XlRegToken {
        dig_sig: None,
        ..session.member_msg(node).member_specs.unwrap()
    }
}

#[tokio::test]
async fn bad_member_tokens_are_refused_with_a_clear_error() {
    let fixture = Fixture::start().await;
    let mallory = node(1, "mallory", 1);
    let weak = RsaKeyPair::generate(1024).unwrap();
    let weak_der = weak.public_key().to_spki_der().to_vec();
    let real_der = mallory.comms.public_key().to_spki_der().to_vec();
    let endpoints = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
    let long_host = format!("{}.example:80", "a".repeat(63));
    let too_long_endpoint = format!("{}.{}", "b".repeat(63), long_host.repeat(3));

    // (case, edit, expected class, expected text); signed by mallory's sig key.
    let cases: Vec<(&str, TokenEdit, ErrCode, String)> = vec![
        (
            "no Name",
            Box::new(|t| t.name = None),
            ErrCode::BadRequest,
            "token has no Name".into(),
        ),
        (
            "an empty Name",
            Box::new(|t| t.name = Some(String::new())),
            ErrCode::BadRequest,
            "member name is empty".into(),
        ),
        (
            "a 256-byte Name",
            Box::new(|t| t.name = Some("n".repeat(256))),
            ErrCode::BadRequest,
            "member name is 256 bytes long; the limit is 255".into(),
        ),
        (
            "a control character in Name",
            Box::new(|t| t.name = Some("a\u{7}b".into())),
            ErrCode::BadRequest,
            "control character".into(),
        ),
        (
            "no CommsKey",
            Box::new(|t| t.comms_key = None),
            ErrCode::BadRequest,
            "token has no CommsKey".into(),
        ),
        (
            "no SigKey",
            Box::new(|t| t.sig_key = None),
            ErrCode::BadRequest,
            "token has no SigKey".into(),
        ),
        (
            "an empty CommsKey",
            Box::new(|t| t.comms_key = Some(Vec::new())),
            ErrCode::BadRequest,
            "CommsKey: not a valid RSA public key".into(),
        ),
        (
            "random bytes as SigKey",
            Box::new(|t| t.sig_key = Some(random_array::<300>().to_vec())),
            ErrCode::BadRequest,
            "SigKey: not a valid RSA public key".into(),
        ),
        (
            "a truncated DER CommsKey",
            Box::new(move |t| t.comms_key = Some(real_der[..real_der.len() - 7].to_vec())),
            ErrCode::BadRequest,
            "CommsKey: not a valid RSA public key".into(),
        ),
        (
            "a 1024-bit CommsKey",
            Box::new(move |t| t.comms_key = Some(weak_der)),
            ErrCode::BadRequest,
            "CommsKey: RSA key of 1024 bits is outside the accepted 2048..=4096 bits".into(),
        ),
        (
            "no endpoints",
            Box::new(|t| t.my_ends.clear()),
            ErrCode::BadRequest,
            "a member must register at least one endpoint".into(),
        ),
        (
            "9 endpoints",
            Box::new(|t| t.my_ends = vec!["127.0.0.1:9".into(); 9]),
            ErrCode::BadRequest,
            "9 endpoints given; a member may register at most 8".into(),
        ),
        (
            "an endpoint without a port",
            Box::new(move |t| t.my_ends = endpoints(&["nohost"])),
            ErrCode::BadRequest,
            "endpoint \"nohost\" is not host:port (no port)".into(),
        ),
        (
            "an endpoint with port 0",
            Box::new(move |t| t.my_ends = endpoints(&["127.0.0.1:0"])),
            ErrCode::BadRequest,
            "port must be 1 to 65535".into(),
        ),
        (
            "an endpoint with port 65536",
            Box::new(move |t| t.my_ends = endpoints(&["h:65536"])),
            ErrCode::BadRequest,
            "port must be 1 to 65535".into(),
        ),
        (
            "an endpoint with an unclosed bracket",
            Box::new(move |t| t.my_ends = endpoints(&["[::1:80"])),
            ErrCode::BadRequest,
            "unclosed '['".into(),
        ),
        (
            "an endpoint with a space",
            Box::new(move |t| t.my_ends = endpoints(&["a b:80"])),
            ErrCode::BadRequest,
            "host is not a valid DNS name or IP address".into(),
        ),
        (
            "an empty endpoint",
            Box::new(move |t| t.my_ends = endpoints(&[""])),
            ErrCode::BadRequest,
            "is not host:port".into(),
        ),
        (
            "an endpoint over 255 bytes",
            Box::new(move |t| t.my_ends = vec![too_long_endpoint]),
            ErrCode::BadRequest,
            "endpoint is".into(),
        ),
        (
            "a 5-byte ID",
            Box::new(|t| t.id = Some(vec![1; 5])),
            ErrCode::BadRequest,
            "token ID: an id must be 32 bytes (or 20 for xlReg 1.9 ids), not 5".into(),
        ),
        (
            "a 33-byte ID",
            Box::new(|t| t.id = Some(vec![1; 33])),
            ErrCode::BadRequest,
            "not 33".into(),
        ),
        (
            "an empty ID",
            Box::new(|t| t.id = Some(Vec::new())),
            ErrCode::BadRequest,
            "not 0".into(),
        ),
    ];
    for (case, edit, code, text) in cases {
        let mut session = RawSession::open(&fixture.server).await;
        let token = crafted_token(&mallory, &session.server_salt, &mallory.sig, edit);
        session
            .send(&XlRegMsg {
                member_specs: Some(token),
                ..op(Tag::Member)
            })
            .await
            .unwrap();
        session.expect_error(case, code, &text).await;
    }

    // A 1024-bit SigKey, with a signature it really made.
    let mut session = RawSession::open(&fixture.server).await;
    let weak_sig_der = weak.public_key().to_spki_der().to_vec();
    let token = crafted_token(&mallory, &session.server_salt, &weak, |t| {
        t.sig_key = Some(weak_sig_der)
    });
    session
        .send(&XlRegMsg {
            member_specs: Some(token),
            ..op(Tag::Member)
        })
        .await
        .unwrap();
    session
        .expect_error(
            "a 1024-bit SigKey",
            ErrCode::BadRequest,
            "SigKey: RSA key of 1024 bits",
        )
        .await;

    // No token at all.
    let mut session = RawSession::open(&fixture.server).await;
    session.send(&op(Tag::Member)).await.unwrap();
    session
        .expect_error(
            "Member without a token",
            ErrCode::BadRequest,
            "Member carries no token",
        )
        .await;

    // Signatures: missing, empty, altered, by the wrong key, or made for another session.
    let unsigned = |session: &RawSession| unsigned_token(session, &mallory);
    let signature_cases: Vec<(&str, TokenMaker, ErrCode, &str)> = vec![
        (
            "no DigSig",
            Box::new(unsigned),
            ErrCode::BadRequest,
            "token has no DigSig",
        ),
        (
            "an empty DigSig",
            Box::new(|s: &RawSession| XlRegToken {
                dig_sig: Some(Vec::new()),
                ..unsigned_token(s, &mallory)
            }),
            ErrCode::Unauthorized,
            "token signature does not verify",
        ),
        (
            "a DigSig with one bit flipped",
            Box::new(|s: &RawSession| {
                let mut token = s.member_msg(&mallory).member_specs.unwrap();
                token.dig_sig.as_mut().unwrap()[10] ^= 1;
                token
            }),
            ErrCode::Unauthorized,
            "token signature does not verify",
        ),
        (
            "a DigSig by the comms key",
            Box::new(|s: &RawSession| {
                crafted_token(&mallory, &s.server_salt, &mallory.comms, |_| {})
            }),
            ErrCode::Unauthorized,
            "token signature does not verify",
        ),
        (
            "a DigSig made for another session",
            Box::new(|_: &RawSession| crafted_token(&mallory, &[7u8; 16], &mallory.sig, |_| {})),
            ErrCode::Unauthorized,
            "token signature does not verify",
        ),
        (
            "a name changed after signing",
            Box::new(|s: &RawSession| XlRegToken {
                name: Some("eve".into()),
                ..s.member_msg(&mallory).member_specs.unwrap()
            }),
            ErrCode::Unauthorized,
            "token signature does not verify",
        ),
    ];
    for (case, make, code, text) in signature_cases {
        let mut session = RawSession::open(&fixture.server).await;
        let token = make(&session);
        session
            .send(&XlRegMsg {
                member_specs: Some(token),
                ..op(Tag::Member)
            })
            .await
            .unwrap();
        session.expect_error(case, code, text).await;
    }

    // A token captured from a real session and replayed in another.
    let first = RawSession::open(&fixture.server).await;
    let captured = first.member_msg(&node(2, "victim", 1));
    let mut session = RawSession::open(&fixture.server).await;
    session.send(&captured).await.unwrap();
    session
        .expect_error(
            "a token replayed from another session",
            ErrCode::Unauthorized,
            "token signature does not verify",
        )
        .await;
    drop(first);

    // alpha's ID claimed with other keys, properly signed by them.
    let impostor = NodeIdentity {
        id: fixture.alpha.id.clone(),
        ..node(1, "alpha", 1)
    };
    let mut session = RawSession::open(&fixture.server).await;
    let msg = member_msg(&impostor, &session.server_salt);
    session.send(&msg).await.unwrap();
    session
        .expect_error(
            "another node's ID",
            ErrCode::Conflict,
            "is registered with a different signing key",
        )
        .await;

    fixture.finish_unchanged().await;
}

#[tokio::test]
async fn bad_cluster_requests_are_refused_and_which_is_limited_to_the_cluster() {
    let fixture = Fixture::start().await;
    let unknown = Id::from_bytes(&[0x5a; 32]).unwrap();
    let create = |name: Option<&str>, size: Option<u32>, endpoints: Option<u32>| XlRegMsg {
        cluster_name: name.map(str::to_string),
        cluster_max_size: size,
        end_point_count: endpoints,
        ..op(Tag::Create)
    };
    let cases: Vec<(&str, XlRegMsg, ErrCode, String)> = vec![
        (
            "Create without a name",
            create(None, Some(3), None),
            ErrCode::BadRequest,
            "Create needs a ClusterName".into(),
        ),
        (
            "Create with an empty name",
            create(Some(""), Some(3), None),
            ErrCode::BadRequest,
            "cluster name is empty".into(),
        ),
        (
            "Create with a 65-byte name",
            create(Some(&"c".repeat(65)), Some(3), None),
            ErrCode::BadRequest,
            "cluster name is 65 bytes long; the limit is 64".into(),
        ),
        (
            "Create with a space in the name",
            create(Some("a b"), Some(3), None),
            ErrCode::BadRequest,
            "contains ' '".into(),
        ),
        (
            "Create with a name starting with a digit",
            create(Some("9lives"), Some(3), None),
            ErrCode::BadRequest,
            "must start with a letter or '_'".into(),
        ),
        (
            "Create without a size",
            create(Some("nosize"), None, None),
            ErrCode::BadRequest,
            "Create needs a ClusterMaxSize".into(),
        ),
        (
            "Create with 0 endpoints",
            create(Some("zero"), Some(3), Some(0)),
            ErrCode::BadRequest,
            "endpoint count 0 is out of range; it must be 1 to 8".into(),
        ),
        (
            "Create with 9 endpoints",
            create(Some("nine"), Some(3), Some(9)),
            ErrCode::BadRequest,
            "endpoint count 9 is out of range; it must be 1 to 8".into(),
        ),
        (
            "Join of an unknown name",
            XlRegMsg {
                cluster_name: Some("nope".into()),
                ..op(Tag::Join)
            },
            ErrCode::NotFound,
            "no such cluster: nope".into(),
        ),
        (
            "Join of an unknown ID",
            XlRegMsg {
                cluster_id: Some(unknown.as_bytes().to_vec()),
                ..op(Tag::Join)
            },
            ErrCode::NotFound,
            format!("no such cluster: {}", unknown.to_hex()),
        ),
        (
            "Join of a 7-byte ID",
            XlRegMsg {
                cluster_id: Some(vec![1; 7]),
                ..op(Tag::Join)
            },
            ErrCode::BadRequest,
            "ClusterID: an id must be 32 bytes".into(),
        ),
        (
            "Join of an invalid name",
            XlRegMsg {
                cluster_name: Some("no/such".into()),
                ..op(Tag::Join)
            },
            ErrCode::BadRequest,
            "contains '/'".into(),
        ),
        (
            "Join naming no cluster",
            op(Tag::Join),
            ErrCode::BadRequest,
            "Join names no cluster (ClusterID or ClusterName)".into(),
        ),
        (
            "GetCluster of an unknown name",
            XlRegMsg {
                cluster_name: Some("nope".into()),
                ..op(Tag::GetCluster)
            },
            ErrCode::NotFound,
            "no such cluster: nope".into(),
        ),
        (
            "GetCluster of an unknown ID",
            XlRegMsg {
                cluster_id: Some(unknown.as_bytes().to_vec()),
                wait_ms: Some(1000),
                ..op(Tag::GetCluster)
            },
            ErrCode::NotFound,
            "no such cluster".into(),
        ),
        (
            "GetCluster naming no cluster",
            op(Tag::GetCluster),
            ErrCode::BadRequest,
            "GetCluster names no cluster".into(),
        ),
    ];
    for (case, msg, code, text) in cases {
        let mut session = fixture.registered().await;
        session.send(&msg).await.unwrap();
        session.expect_error(case, code, &text).await;
    }

    // Which bits beyond the cluster's 3 slots are ignored; only present slots come back.
    let mut session = fixture.registered().await;
    for (which, returned) in [
        (u64::MAX, 0b1),
        (1 << 63, 0),
        (0b1110, 0),
        (0b1000_0001, 0b1),
    ] {
        let reply = session
            .call(&XlRegMsg {
                cluster_name: Some("base".into()),
                which: Some(which),
                ..op(Tag::GetCluster)
            })
            .await;
        assert_eq!(reply.op, Some(Tag::ClusterMembers as i32), "{reply:?}");
        assert_eq!(reply.which, Some(returned), "Which {which:#x}");
        assert_eq!(reply.tokens.len(), returned.count_ones() as usize);
    }
    let reply = session.call(&op(Tag::Bye)).await;
    assert_eq!(reply.op, Some(Tag::Ack as i32));

    fixture.finish_unchanged().await;
}

#[tokio::test]
async fn sizes_are_clamped_and_reported() {
    let fixture = Fixture::start().await;
    let mut client = fixture.server.client().await;
    client.register(&fixture.mallory).await.unwrap();
    let expected = [(0, 2), (1, 2), (2, 2), (64, 64), (65, 64), (u32::MAX, 64)];
    for (asked, got) in expected {
        let cluster = client
            .create(&format!("size{asked}"), asked, 8)
            .await
            .unwrap();
        assert_eq!(cluster.max_size, got, "asked for {asked}");
        assert_eq!(cluster.endpoint_count, 8);
    }
    client.bye().await.unwrap();
    let (after, before) = fixture.finish().await;
    assert_eq!(after.nodes, before.nodes);
    let mut sizes: Vec<_> = after
        .clusters
        .iter()
        .filter(|c| !before.clusters.contains(c))
        .map(|c| (c.name.clone(), c.max_size, c.members.len()))
        .collect();
    sizes.sort();
    let mut wanted: Vec<_> = expected
        .iter()
        .map(|(asked, got)| (format!("size{asked}"), *got, 0))
        .collect();
    wanted.sort();
    assert_eq!(sizes, wanted);
}
