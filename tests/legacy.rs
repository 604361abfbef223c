//! The opt-in xlReg 1.9 listener against a real `xlreg serve --legacy-listen` process: full
//! 1.9 sessions from the test suite's own 1.9 client, sessions mixed with xlReg/2 clients on
//! one store, messages split across writes, every error path, and restarts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::legacy_client::{
    create_msg, expect, expect_error, get_msg, hello, join_by_id, join_by_name, op, LegacyClient,
    LegacyMember, ATTR_ADMIN, ATTR_EPHEMERAL, ATTR_SOLO,
};
use common::{metric, node, wait_for_metric, Server};
use tokio::io::AsyncReadExt as _;
use xlreg::client::Client;
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::regcred::RegCred;
use xlreg::store::ClusterRef;

/// Starts a registry with the legacy listener on an ephemeral port and returns it with the
/// Go-format credentials it wrote for 1.9 clients (read from the file: that is how a 1.9
/// client, and this test, learn the legacy port).
fn start(dir: &Path, extra: &[&str]) -> (Server, RegCred) {
    let mut args = vec!["--legacy-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start(dir, &args);
    let legacy = RegCred::read(dir.join("legacy").join("regCred.dat")).unwrap();
    (server, legacy)
}

/// The reply a Go 1.9.24 server sends to Create and Join: exactly these four fields.
fn cluster_reply(tag: Tag, id: &[u8], max_size: u32) -> XlRegMsg {
    XlRegMsg {
        cluster_id: Some(id.to_vec()),
        cluster_max_size: Some(max_size),
        cluster_attrs: Some(0),
        end_point_count: Some(1),
        ..op(tag)
    }
}

/// The member IDs a ClusterMembers reply lists, in slot order.
fn token_ids(reply: &XlRegMsg) -> Vec<Vec<u8>> {
    reply
        .tokens
        .iter()
        .map(|t| t.id.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn legacy_clients_register_create_join_list_and_say_bye() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, cred) = start(&data, &[]);
    // The legacy regCred.dat names the legacy listener and the 1.9 version; the native one
    // is unchanged.
    assert_eq!(cred.version, "1.9.24");
    assert_ne!(cred.endpoint(), server.endpoint());
    assert_eq!(cred.id, server.regcred.id);
    assert_eq!(cred.comms_key, server.regcred.comms_key);
    assert_eq!(server.regcred.version, env!("CARGO_PKG_VERSION"));
    let text = std::fs::read_to_string(data.join("legacy").join("regCred.dat")).unwrap();
    assert!(text.starts_with("regCred {\r\n"), "{text}");
    assert!(text.contains("    Version: 1.9.24\r\n"), "{text}");
    assert!(text.contains(&format!("TcpEndPoint: {}\r\n", cred.endpoint())));

    let alpha = LegacyMember::new(0, "alpha");
    let mut a = LegacyClient::connect(&cred).await;
    assert_eq!(a.version, [0x01, 0x09, 0x18, 0x00]);
    let ok = a.member(&alpha).await;
    // Exactly what the Go server answered: the member's own ID and its attributes.
    assert_eq!(
        ok,
        XlRegMsg {
            member_id: Some(alpha.id.to_vec()),
            member_attrs: Some(1),
            ..op(Tag::MemberOk)
        }
    );
    let created = expect(a.call(&create_msg("trio", 3)).await, Tag::CreateReply);
    let cluster_id = created.cluster_id.clone().unwrap();
    assert_eq!(created, cluster_reply(Tag::CreateReply, &cluster_id, 3));
    // Neither ID nor name: the cluster just created.
    let joined = a.call(&op(Tag::Join)).await;
    assert_eq!(joined, cluster_reply(Tag::JoinReply, &cluster_id, 3));
    let members = expect(
        a.call(&get_msg(&cluster_id, 0b111)).await,
        Tag::ClusterMembers,
    );
    assert_eq!(members.which, Some(0b1));
    assert_eq!(members.cluster_id.as_deref(), Some(&cluster_id[..]));
    assert!(members.cluster_name.is_none() && members.cluster_max_size.is_none());
    let token = &members.tokens[0];
    assert_eq!(token.name.as_deref(), Some("alpha"));
    assert_eq!(token.id.as_deref(), Some(&alpha.id[..]));
    assert_eq!(token.attrs, Some(1));
    assert_eq!(token.my_ends, alpha.endpoints);
    assert_eq!(
        token.sig_key.as_deref(),
        Some(alpha.sig.public_key().to_spki_der())
    );
    assert!(token.dig_sig.is_none());

    // A second member: Create of the existing name returns it unchanged; join by name.
    let beta = LegacyMember::new(1, "beta");
    let mut b = LegacyClient::connect(&cred).await;
    b.member(&beta).await;
    let again = b.call(&create_msg("trio", 9)).await;
    assert_eq!(again, cluster_reply(Tag::CreateReply, &cluster_id, 3));
    let joined = b.call(&join_by_name("trio")).await;
    assert_eq!(joined, cluster_reply(Tag::JoinReply, &cluster_id, 3));
    let members = expect(
        b.call(&get_msg(&cluster_id, u64::MAX)).await,
        Tag::ClusterMembers,
    );
    assert_eq!(members.which, Some(0b11));
    assert_eq!(token_ids(&members), [alpha.id.to_vec(), beta.id.to_vec()]);
    b.bye().await;
    // GetCluster any number of times; then Bye.
    for _ in 0..3 {
        let members = a.call(&get_msg(&cluster_id, 0b10)).await;
        assert_eq!(members.which, Some(0b10));
        assert_eq!(token_ids(&members), [beta.id.to_vec()]);
    }
    a.bye().await;
    let log = server.log_text();
    assert!(log.contains("xlReg/1.9"), "{log}");
    assert!(log.contains("legacy_regcred"), "{log}");
}

#[tokio::test]
async fn legacy_requests_are_counted_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cred) = start(
        &dir.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = server.metrics_addr();
    let mut a = LegacyClient::connect(&cred).await;
    a.member(&LegacyMember::new(0, "alpha")).await;
    let created = expect(a.call(&create_msg("pair", 2)).await, Tag::CreateReply);
    let id = created.cluster_id.unwrap();
    expect(a.call(&op(Tag::Join)).await, Tag::JoinReply);
    expect(a.call(&get_msg(&id, 0b11)).await, Tag::ClusterMembers);
    expect(a.call(&get_msg(&id, 0b01)).await, Tag::ClusterMembers);
    a.bye().await;
    // A second session sends Join before Member: refused with the Go server's words.
    let mut b = LegacyClient::connect(&cred).await;
    let reply = b.call(&join_by_name("pair")).await;
    expect_error(&mut b, reply, "invalid msg type for current state").await;

    let text = wait_for_metric(&metrics, r#"xlreg_sessions_total{outcome="refused"}"#, 1.0);
    for (series, value) in [
        (r#"xlreg_requests_total{op="Member",result="ok"}"#, 1.0),
        (r#"xlreg_requests_total{op="Create",result="ok"}"#, 1.0),
        (r#"xlreg_requests_total{op="Join",result="ok"}"#, 1.0),
        (r#"xlreg_requests_total{op="GetCluster",result="ok"}"#, 2.0),
        (r#"xlreg_requests_total{op="Bye",result="ok"}"#, 1.0),
        (
            r#"xlreg_requests_total{op="Join",result="InvalidState"}"#,
            1.0,
        ),
        (r#"xlreg_errors_total{kind="InvalidState"}"#, 1.0),
        (r#"xlreg_sessions_total{outcome="bye"}"#, 1.0),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn legacy_and_xlreg2_clients_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cred) = start(&dir.path().join("data"), &[]);

    // A 1.9 member creates a cluster; an xlReg/2 node joins it and sees the 1.9 member
    // with its 20-byte ID.
    let old = LegacyMember::new(0, "old-node");
    let mut legacy = LegacyClient::connect(&cred).await;
    legacy.member(&old).await;
    let created = legacy.call(&create_msg("from-legacy", 4)).await;
    let legacy_cluster = created.cluster_id.clone().unwrap();
    expect(legacy.call(&op(Tag::Join)).await, Tag::JoinReply);
    legacy.bye().await;

    let mut native = server.client().await;
    let native_id = native.register(&node(2, "new-node", 1)).await.unwrap();
    let by_name = ClusterRef::Name("from-legacy".into());
    let (cluster, slot) = native.join(Some(&by_name)).await.unwrap();
    assert_eq!(cluster.id.as_bytes(), &legacy_cluster[..]);
    assert_eq!((cluster.max_size, slot), (4, 1));
    let view = native
        .get_cluster(Some(&by_name), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(view.members.len(), 2);
    assert_eq!(view.members[0].name, "old-node");
    assert_eq!(view.members[0].id.as_bytes(), &old.id[..]);
    assert_eq!(view.members[0].id.as_bytes().len(), 20);
    assert_eq!(view.members[1].id, native_id);

    // An xlReg/2 node creates a cluster; a 1.9 member joins it by its (32-byte) ID and
    // lists both.
    let native_cluster = native.create("from-native", 3, 1).await.unwrap();
    native.join(None).await.unwrap();
    let newer = LegacyMember::new(1, "old-node-2");
    let mut legacy = LegacyClient::connect(&cred).await;
    legacy.member(&newer).await;
    let joined = legacy.call(&join_by_id(native_cluster.id.as_bytes())).await;
    assert_eq!(
        joined,
        cluster_reply(Tag::JoinReply, native_cluster.id.as_bytes(), 3)
    );
    let members = legacy
        .call(&get_msg(native_cluster.id.as_bytes(), u64::MAX))
        .await;
    assert_eq!(members.which, Some(0b11));
    assert_eq!(
        token_ids(&members),
        [native_id.as_bytes().to_vec(), newer.id.to_vec()]
    );
    legacy.bye().await;

    // An xlReg/2 GetCluster waiting for the cluster to fill is woken by a 1.9 join.
    let mut waiter = server.client().await;
    waiter.register(&node(3, "watcher", 1)).await.unwrap();
    let native_ref = ClusterRef::Id(native_cluster.id.clone());
    let wait = tokio::spawn(async move {
        waiter
            .get_cluster(Some(&native_ref), None, Duration::from_secs(60))
            .await
    });
    let last = LegacyMember::new(4, "old-node-3");
    let mut legacy = LegacyClient::connect(&cred).await;
    legacy.member(&last).await;
    expect(
        legacy.call(&join_by_id(native_cluster.id.as_bytes())).await,
        Tag::JoinReply,
    );
    legacy.bye().await;
    let full = wait.await.unwrap().unwrap();
    assert!(full.is_complete(), "{full:?}");
    assert_eq!(full.members[2].id.as_bytes(), &last.id[..]);
    native.bye().await.unwrap();
}

#[tokio::test]
async fn messages_split_across_slow_writes_are_understood() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, cred) = start(&dir.path().join("data"), &[]);
    let pause = Duration::from_millis(150);
    let mut client = LegacyClient::connect_in_pieces(&cred, 3, pause).await;
    let member = LegacyMember::new(0, "slow");
    // About 950 bytes in five pieces: most splits fall inside AES blocks.
    client.send_in_pieces(&member.member_msg(), 5, pause).await;
    expect(client.recv().await.unwrap(), Tag::MemberOk);
    // 48 bytes in two pieces of 24, and in three of 16: splits on block boundaries too.
    for pieces in [2, 3] {
        client
            .send_in_pieces(&create_msg("slowly", 2), pieces, pause)
            .await;
        let reply = client.recv().await.unwrap();
        if pieces == 2 {
            expect(reply, Tag::CreateReply);
        } else {
            // A second Create is not allowed: the registry understood it all the same.
            expect_error(&mut client, reply, "invalid msg type for current state").await;
        }
    }
}

#[tokio::test]
async fn errors_reach_1_9_clients_and_the_registry_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    // A short idle timeout, so that incomplete messages are answered quickly.
    let (server, cred) = start(&dir.path().join("data"), &["--idle-timeout", "3"]);

    // Create before Member: the Go server's words, then the close.
    let mut client = LegacyClient::connect(&cred).await;
    let reply = client.call(&create_msg("early", 2)).await;
    expect_error(&mut client, reply, "invalid msg type for current state").await;

    // Unknown clusters, by name and by ID.
    let lost = LegacyMember::new(0, "lost");
    for join in [join_by_name("no-such-cluster"), join_by_id(&[0x42; 32])] {
        let mut client = LegacyClient::connect(&cred).await;
        client.member(&lost).await;
        let reply = client.call(&join).await;
        expect_error(&mut client, reply, "no such cluster").await;
    }

    // Stricter than the Go registry: a second member with a name already used in the
    // cluster, and a known ID presented with other keys.
    let first = LegacyMember::new(1, "same-name");
    let mut client = LegacyClient::connect(&cred).await;
    client.member(&first).await;
    client.call(&create_msg("names", 4)).await;
    expect(client.call(&op(Tag::Join)).await, Tag::JoinReply);
    client.bye().await;
    let second = LegacyMember::new(2, "same-name");
    let mut client = LegacyClient::connect(&cred).await;
    client.member(&second).await;
    let reply = client.call(&join_by_name("names")).await;
    expect_error(
        &mut client,
        reply,
        "cluster names already has a different member named same-name",
    )
    .await;
    let thief = LegacyMember {
        id: first.id,
        ..LegacyMember::new(3, "thief")
    };
    let mut client = LegacyClient::connect(&cred).await;
    let reply = client.call(&thief.member_msg()).await;
    expect_error(
        &mut client,
        reply,
        "registered with a different signing key",
    )
    .await;

    // Ciphertext that is not a whole number of blocks, or shorter than one block (the Go
    // registry crashed on both): the registry waits for the rest until the idle timeout,
    // then answers with an Error and closes.
    for junk in [vec![7u8; 16 + 20], vec![7u8; 10]] {
        let mut client = LegacyClient::connect(&cred).await;
        client.member(&LegacyMember::new(4, "junk")).await;
        client.send_raw(&junk).await;
        let reply = client.recv().await.expect("an Error, not a bare close");
        expect_error(&mut client, reply, "do not decrypt").await;
    }

    // A hello under another key: closed without a word.
    let (other_comms, _) = common::key_pair(5);
    let (_, wrong) = hello(other_comms.public_key());
    let mut stream = tokio::net::TcpStream::connect(cred.endpoint())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &wrong)
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    assert!(read.is_err() || answer.is_empty(), "{answer:?}");

    // The registry still serves 1.9 and xlReg/2 clients normally.
    let member = LegacyMember::new(6, "after");
    let mut client = LegacyClient::connect(&cred).await;
    client.member(&member).await;
    let created = client.call(&create_msg("after", 2)).await;
    let id = created.cluster_id.unwrap();
    expect(client.call(&op(Tag::Join)).await, Tag::JoinReply);
    let members = client.call(&get_msg(&id, 0b1)).await;
    assert_eq!(token_ids(&members), [member.id.to_vec()]);
    client.bye().await;
    let mut native: Client = server.client().await;
    native.register(&node(7, "native", 1)).await.unwrap();
    native.bye().await.unwrap();
    let log = server.log_text();
    assert!(log.contains("refused: BadRequest"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn legacy_joins_survive_a_crash_and_the_version_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let go_dir = dir.path().join("go-client");
    let go_regcred = go_dir.join("regCred.dat");
    let go_regcred_arg = go_regcred.to_str().unwrap();
    let server = Server::start(
        &data,
        &[
            "--legacy-listen",
            "127.0.0.1:0",
            "--legacy-version",
            "1.9.30",
            "--legacy-regcred-out",
            go_regcred_arg,
        ],
    );
    let cred = RegCred::read(&go_regcred).unwrap();
    assert_eq!(cred.version, "1.9.30");
    assert!(!data.join("legacy").join("regCred.dat").exists());
    let member = LegacyMember::new(0, "durable");
    let mut client = LegacyClient::connect(&cred).await;
    assert_eq!(client.version, [1, 9, 30, 0]);
    client.member(&member).await;
    let created = client.call(&create_msg("kept", 2)).await;
    let id = created.cluster_id.unwrap();
    expect(client.call(&op(Tag::Join)).await, Tag::JoinReply);
    // The JoinReply was sent only once the join was on disk: a crash now loses nothing.
    server.kill();

    let (_server, cred) = start(&data, &[]);
    assert_eq!(cred.version, "1.9.24");
    let mut client = LegacyClient::connect(&cred).await;
    assert_eq!(client.version, [1, 9, 24, 0]);
    client.member(&member).await;
    // Rejoining gives the member its slot back.
    let joined = client.call(&join_by_name("kept")).await;
    assert_eq!(joined, cluster_reply(Tag::JoinReply, &id, 2));
    let members = client.call(&get_msg(&id, u64::MAX)).await;
    assert_eq!(members.which, Some(0b1));
    assert_eq!(token_ids(&members), [member.id.to_vec()]);
    client.bye().await;
}

#[tokio::test]
async fn go_admin_client_registers_with_no_endpoints_and_creates_a_cluster_members_join() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cred) = start(&dir.path().join("data"), &[]);

    // Go tooling creates a cluster through AdminClient: Member with no endpoints, Create,
    // Bye. The Go registry accepts it; so does this one.
    let admin = LegacyMember::go_admin_client(0);
    assert!(admin.member_msg().member_specs.unwrap().my_ends.is_empty());
    let mut client = LegacyClient::connect(&cred).await;
    let ok = client.member(&admin).await;
    assert_eq!(
        ok,
        XlRegMsg {
            member_id: Some(admin.id.to_vec()),
            member_attrs: Some(ATTR_ADMIN | ATTR_SOLO | ATTR_EPHEMERAL),
            ..op(Tag::MemberOk)
        }
    );
    let created = expect(client.call(&create_msg("fleet", 2)).await, Tag::CreateReply);
    let cluster_id = created.cluster_id.clone().unwrap();
    assert_eq!(created, cluster_reply(Tag::CreateReply, &cluster_id, 2));
    client.bye().await;

    // The cluster it made is an ordinary one: members with endpoints join it and list it.
    let member = LegacyMember::new(1, "web-1");
    let mut client = LegacyClient::connect(&cred).await;
    client.member(&member).await;
    let joined = client.call(&join_by_name("fleet")).await;
    assert_eq!(joined, cluster_reply(Tag::JoinReply, &cluster_id, 2));
    let members = client.call(&get_msg(&cluster_id, u64::MAX)).await;
    assert_eq!(token_ids(&members), [member.id.to_vec()]);
    client.bye().await;

    // Joining still needs the cluster's endpoint count, as on the Go registry: a node with
    // no endpoints is refused, with the reason in the Error and in the registry's log.
    let mut client = LegacyClient::connect(&cred).await;
    client.member(&admin).await;
    let reply = client.call(&join_by_name("fleet")).await;
    expect_error(&mut client, reply, "the node offers 0").await;
    server.wait_for_log("the join refusal's text in the log", |log| {
        log.lines().any(|line| {
            line.contains("xlReg/1.9")
                && line.contains("refused: BadRequest")
                && line.contains("the node offers 0")
        })
    });
}

#[tokio::test]
async fn go_solo_member_obtains_an_id_with_no_endpoints_and_xlreg2_still_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cred) = start(&dir.path().join("data"), &[]);
    let solo = LegacyMember::go_solo_member(0, "solo");
    let mut client = LegacyClient::connect(&cred).await;
    let ok = client.member(&solo).await;
    assert_eq!(ok.member_id.as_deref(), Some(&solo.id[..]));
    assert_eq!(ok.member_attrs, Some(ATTR_SOLO));
    client.bye().await;

    // xlReg/2 keeps its rule: a member registers 1 to 8 endpoints (docs/protocol.md).
    let mut native = common::RawSession::open(&server).await;
    let msg = native.member_msg(&node(1, "no-endpoints", 0));
    native.send(&msg).await.unwrap();
    native
        .expect_error(
            "an xlReg/2 Member with no endpoints",
            xlreg::proto::ErrCode::BadRequest,
            "at least one endpoint",
        )
        .await;
}

#[tokio::test]
async fn a_legacy_session_between_requests_is_ended_by_shutdown_and_logged_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cred) = start(&dir.path().join("data"), &[]);
    let mut client = LegacyClient::connect(&cred).await;
    client.member(&LegacyMember::new(0, "alpha")).await;
    server.send_signal(libc::SIGTERM);
    // The session is between requests: the registry closes it at once, without a word.
    assert!(client.recv().await.is_none());
    let log_path = server.log.clone();
    assert_eq!(server.wait_exit(), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    let line = log
        .lines()
        .find(|line| line.contains("wire=\"xlReg/1.9\"") && line.contains("ops=1"))
        .unwrap_or_else(|| panic!("no 1.9 session line in\n{log}"));
    assert!(line.contains("closed: shutting down"), "{line}");
}
