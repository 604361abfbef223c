//! Admission control, black-box (issue 12; docs/protocol.md sections 14 and 15): real
//! `xlreg serve` processes, the real `xlreg` binary where a person would use it, the client
//! library where many sessions race, and raw sessions where a test must send what no honest
//! client would (a proof from another session).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::legacy_client::{expect, expect_error, join_by_name, LegacyClient, LegacyMember};
use common::{
    http_get, init_node, metric, node, stderr, stdout, wait_for_metric, xlreg, RawSession, Server,
};
use xlreg::client::{Client, ClientError, ClusterOwner, TokenTerms, DEFAULT_TIMEOUT, USAGE_JOIN};
use xlreg::id::Id;
use xlreg::model::admission::{join_proof_input, JoinTokenSecret, JoiningNode, OwnerSecret};
use xlreg::proto::{ErrCode, Tag, XlRegMsg};
use xlreg::regcred::RegCred;
use xlreg::store::ClusterRef;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// What `cluster create --json --owner-file` printed.
struct Created {
    id: String,
    owner: String,
    join: String,
    owner_file: PathBuf,
}

/// Creates an admission-controlled cluster with the CLI; `extra` are more options.
fn create(dir: &Path, regcred: &Path, name: &str, size: u32, extra: &[&str]) -> Created {
    let owner_file = dir.join(format!("{name}.owner"));
    let size = size.to_string();
    let mut args = vec![
        "cluster",
        "create",
        name,
        "--size",
        &size,
        "--regcred",
        s(regcred),
        "--owner-file",
        s(&owner_file),
        "--json",
    ];
    args.extend_from_slice(extra);
    let output = xlreg(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    Created {
        id: doc["cluster"]["id"].as_str().unwrap().to_string(),
        owner: doc["owner"].as_str().unwrap().to_string(),
        join: doc["join_token"].as_str().unwrap().to_string(),
        owner_file,
    }
}

/// A node identity directory `name` with one endpoint.
fn node_dir(dir: &Path, name: &str, port: u16) -> PathBuf {
    let path = dir.join(name);
    init_node(&path, name, port);
    path
}

/// `xlreg cluster join CLUSTER --node DIR --token TOKEN --wait 0 [--regcred F]`.
fn join(cluster: &str, node: &Path, token: &str, regcred: Option<&Path>) -> Output {
    let mut args = vec![
        "cluster",
        "join",
        cluster,
        "--node",
        s(node),
        "--token",
        token,
        "--wait",
        "0",
    ];
    if let Some(regcred) = regcred {
        args.extend(["--regcred", s(regcred)]);
    }
    xlreg(&args)
}

/// `xlreg cluster SUBCOMMAND... --owner-file F --regcred F --json`, which must succeed.
fn owner_cli(sub: &[&str], created: &Created, regcred: &Path) -> serde_json::Value {
    let mut args = vec!["cluster"];
    args.extend_from_slice(sub);
    args.extend([
        "--owner-file",
        s(&created.owner_file),
        "--regcred",
        s(regcred),
        "--json",
    ]);
    let output = xlreg(&args);
    assert!(output.status.success(), "{sub:?}: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The members of a cluster as its owner lists them: (slot, name).
fn members_as_owner(created: &Created, regcred: &Path) -> Vec<(u64, String)> {
    let doc = owner_cli(&["members", &created.id], created, regcred);
    doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["slot"].as_u64().unwrap(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A refusal's code and text.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Option<ErrCode>, String) {
    match result {
        Err(ClientError::Refused {
            code, description, ..
        }) => (code, description),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A session with `node` registered; returns it and the node's ID.
async fn registered(server: &Server, node: &xlreg::node::NodeIdentity) -> (Client, Id) {
    let mut client = server.client().await;
    let id = client.register(node).await.expect("register");
    (client, id)
}

/// An owned, admission-controlled cluster created through the library by `creator`, with
/// a first token on `terms`: the cluster, its owner (credential and ID) and the token.
async fn owned_cluster(
    server: &Server,
    creator: &xlreg::node::NodeIdentity,
    name: &str,
    size: u32,
    terms: &TokenTerms,
) -> (xlreg::client::ClusterInfo, ClusterOwner, JoinTokenSecret) {
    let secret = OwnerSecret::generate(&mut rand::rng());
    let token = JoinTokenSecret::generate(&mut rand::rng());
    let (mut client, _) = registered(server, creator).await;
    let cluster = client
        .create_owned(name, size, 1, &secret, false, Some((&token, terms)))
        .await
        .unwrap();
    let owner = ClusterOwner {
        cluster: cluster.id.clone(),
        secret,
    };
    (cluster, owner, token)
}

#[tokio::test]
async fn a_stranger_with_only_regcred_can_neither_list_nor_join_nor_squat_and_cannot_tell_it_exists(
) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let created = create(dir.path(), &server.regcred_path, "vault", 3, &[]);
    let stranger = node(0, "stranger", 1);
    let vault = ClusterRef::Name("vault".into());
    let vault_id = ClusterRef::Id(Id::from_hex(&created.id).unwrap());
    let absent = ClusterRef::Name("absent".into());
    let absent_id = ClusterRef::Id(Id::from_bytes(&[0xab; 32]).unwrap());

    // Listing: the same answer as for a cluster that does not exist, by name and by ID.
    for (exists, missing) in [(&vault, &absent), (&vault_id, &absent_id)] {
        let (mut a, _) = registered(&server, &stranger).await;
        let seen = refusal(a.get_cluster(Some(exists), None, Duration::ZERO).await);
        let (mut b, _) = registered(&server, &stranger).await;
        let unseen = refusal(b.get_cluster(Some(missing), None, Duration::ZERO).await);
        assert_eq!(seen.0, Some(ErrCode::NotFound), "{}", seen.1);
        assert_eq!(seen.0, unseen.0);
        assert_eq!(
            seen.1.replace(&exists.to_string(), "REF"),
            unseen.1.replace(&missing.to_string(), "REF"),
            "the texts must differ only in the name asked about"
        );
    }

    // Joining without a token: the same answer again.
    for (exists, missing) in [(&vault, &absent), (&vault_id, &absent_id)] {
        let (mut a, _) = registered(&server, &stranger).await;
        let seen = refusal(a.join(Some(exists)).await);
        let (mut b, _) = registered(&server, &stranger).await;
        let unseen = refusal(b.join(Some(missing)).await);
        assert_eq!(seen.0, Some(ErrCode::NotFound), "{}", seen.1);
        assert_eq!(
            seen.1.replace(&exists.to_string(), "REF"),
            unseen.1.replace(&missing.to_string(), "REF")
        );
    }

    // Joining with a made-up token: refused, the same as a made-up token for a cluster
    // that does not exist.
    let guess = JoinTokenSecret::generate(&mut rand::rng());
    let vault_bytes = Id::from_hex(&created.id).unwrap();
    let absent_bytes = Id::from_bytes(&[0xab; 32]).unwrap();
    let (mut a, a_id) = registered(&server, &stranger).await;
    let seen = refusal(
        a.join_with_token(&vault_id, &vault_bytes, &guess, &stranger, &a_id)
            .await,
    );
    let (mut b, b_id) = registered(&server, &stranger).await;
    let unseen = refusal(
        b.join_with_token(&absent_id, &absent_bytes, &guess, &stranger, &b_id)
            .await,
    );
    assert_eq!(seen.0, Some(ErrCode::Unauthorized), "{}", seen.1);
    assert_eq!(
        seen.1.replace(&vault_id.to_string(), "REF"),
        unseen.1.replace(&absent_id.to_string(), "REF")
    );

    // Squatting: creating the name gets Conflict, not the cluster.
    let (mut c, _) = registered(&server, &stranger).await;
    let squat = refusal(c.create("vault", 3, 1).await);
    assert_eq!(squat.0, Some(ErrCode::Conflict), "{}", squat.1);
    assert!(!squat.1.contains(&created.id), "{}", squat.1);
    let (mut d, _) = registered(&server, &stranger).await;
    let squat = refusal(
        d.create_owned(
            "vault",
            3,
            1,
            &OwnerSecret::generate(&mut rand::rng()),
            false,
            None,
        )
        .await,
    );
    assert_eq!(squat.0, Some(ErrCode::Conflict), "{}", squat.1);

    // And the cluster is untouched: no member, the stranger nowhere.
    assert!(members_as_owner(&created, &server.regcred_path).is_empty());
    assert_eq!(created.owner.len(), 32);
}

#[test]
fn a_token_holder_joins_with_the_join_string_alone_and_without_a_token_only_members_rejoin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let created = create(dir.path(), &server.regcred_path, "web", 3, &[]);
    assert!(created.join.starts_with("xlreg1:"), "{}", created.join);
    let a = node_dir(dir.path(), "node-a", 9001);
    let b = node_dir(dir.path(), "node-b", 9002);

    // A join string and nothing else: no regCred.dat anywhere on the command line.
    let joined = join("web", &a, &created.join, None);
    assert!(joined.status.success(), "{}", stderr(&joined));
    // By ID, with a regCred.dat as well (checked against the string's pin).
    let joined = join(&created.id, &b, &created.join, Some(&server.regcred_path));
    assert!(joined.status.success(), "{}", stderr(&joined));
    assert_eq!(
        members_as_owner(&created, &server.regcred_path),
        [(0, "node-a".to_string()), (1, "node-b".to_string())]
    );

    // Without a token: a member rejoins (its own slot back), a non-member is refused.
    let rejoin = xlreg(&[
        "cluster",
        "join",
        "web",
        "--node",
        s(&a),
        "--regcred",
        s(&server.regcred_path),
        "--wait",
        "0",
        "--json",
    ]);
    assert!(rejoin.status.success(), "{}", stderr(&rejoin));
    let c = node_dir(dir.path(), "node-c", 9003);
    let refused = xlreg(&[
        "cluster",
        "join",
        "web",
        "--node",
        s(&c),
        "--regcred",
        s(&server.regcred_path),
        "--wait",
        "0",
    ]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    for text in ["no such cluster", "give --token JOIN_STRING"] {
        assert!(stderr(&refused).contains(text), "{}", stderr(&refused));
    }

    // Members see their cluster; a list without credentials sees nothing.
    let listed = xlreg(&[
        "cluster",
        "members",
        "web",
        "--node",
        s(&a),
        "--regcred",
        s(&server.regcred_path),
    ]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(stdout(&listed).contains("node-b"), "{}", stdout(&listed));
    let anonymous = xlreg(&[
        "cluster",
        "members",
        "web",
        "--regcred",
        s(&server.regcred_path),
    ]);
    assert_eq!(anonymous.status.code(), Some(3), "{}", stderr(&anonymous));
}

#[test]
fn creating_again_with_the_same_owner_file_returns_the_cluster_and_a_join_string_that_admits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let first = create(dir.path(), &server.regcred_path, "web", 3, &[]);
    // The same command again (a script re-run): the owner file's credential is reused.
    let again = create(dir.path(), &server.regcred_path, "web", 3, &[]);
    assert_eq!(again.id, first.id);
    assert_eq!(again.owner, first.owner);
    assert_ne!(again.join, first.join, "a fresh token each time");
    let a = node_dir(dir.path(), "node-a", 9001);
    let b = node_dir(dir.path(), "node-b", 9002);
    assert!(join("web", &a, &first.join, None).status.success());
    let joined = join("web", &b, &again.join, None);
    assert!(joined.status.success(), "{}", stderr(&joined));
    // Without the owner file the name is someone else's: taken.
    let taken = xlreg(&[
        "cluster",
        "create",
        "web",
        "--size",
        "3",
        "--regcred",
        s(&server.regcred_path),
    ]);
    assert_eq!(taken.status.code(), Some(4), "{}", stderr(&taken));
    assert!(stderr(&taken).contains("taken"), "{}", stderr(&taken));
    // An owner file of another cluster is refused before anything is sent.
    let other = xlreg(&[
        "cluster",
        "create",
        "api",
        "--size",
        "3",
        "--regcred",
        s(&server.regcred_path),
        "--owner-file",
        s(&first.owner_file),
    ]);
    assert_eq!(other.status.code(), Some(2), "{}", stderr(&other));
    assert!(
        stderr(&other).contains("owner file of cluster web"),
        "{}",
        stderr(&other)
    );
}

#[test]
fn a_join_string_whose_pin_another_registry_fails_is_refused_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let real = Server::start(&dir.path().join("real"), &[]);
    let other = Server::start(&dir.path().join("other"), &[]);
    let created = create(dir.path(), &real.regcred_path, "web", 2, &[]);
    let (head, _) = created.join.split_once('@').unwrap();
    let hijacked = format!("{head}@{}", other.endpoint());
    let a = node_dir(dir.path(), "node-a", 9001);
    let refused = join("web", &a, &hijacked, None);
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("not the one this join string pins"),
        "{}",
        stderr(&refused)
    );
    // A regCred.dat that does not match the pin is refused the same way.
    let refused = join("web", &a, &created.join, Some(&other.regcred_path));
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
}

#[test]
fn a_join_string_for_a_registry_without_the_credentials_fetch_says_what_to_do() {
    // What a registry from before section 14.10 does with the fetch's first frame: close
    // the connection unanswered (a frame of 8 bytes is no hello).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let closer = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut frame = [0u8; 12];
            std::io::Read::read_exact(&mut stream, &mut frame).unwrap();
            assert_eq!(&frame[4..], b"XLRC\x00\x00\x00\x01");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let a = node_dir(dir.path(), "node-a", 9001);
    let join_string = format!(
        "xlreg1:k3x9p0.abcdefghijklmnopqrstuvwxyz:{}:{}@{endpoint}",
        "55".repeat(32),
        "f0".repeat(32)
    );
    let refused = join("web", &a, &join_string, None);
    closer.join().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("give its regCred.dat with --regcred"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn expired_revoked_and_used_up_tokens_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = &server.regcred_path;
    let created = create(dir.path(), regcred, "web", 8, &["--token-uses", "1"]);
    let mint = |extra: &[&str]| -> String {
        let mut sub = vec!["token", "create", "web"];
        sub.extend_from_slice(extra);
        owner_cli(&sub, &created, regcred)["join_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let short = mint(&["--ttl", "1s"]);
    let revoked = mint(&[]);
    let list_only = mint(&["--usage", "list"]);
    let revoked_tid = revoked["xlreg1:".len()..].split('.').next().unwrap();
    owner_cli(&["token", "revoke", "web", revoked_tid], &created, regcred);

    // The first token admits one node, then is used up.
    let a = node_dir(dir.path(), "node-a", 9001);
    assert!(join("web", &a, &created.join, Some(regcred))
        .status
        .success());
    std::thread::sleep(Duration::from_millis(1500));
    let b = node_dir(dir.path(), "node-b", 9002);
    for (token, text) in [
        (&created.join, "is used up"),
        (&short, "has expired"),
        (&revoked, "was revoked"),
        (&list_only, "does not allow joining"),
    ] {
        let refused = join("web", &b, token, Some(regcred));
        assert_eq!(
            refused.status.code(),
            Some(5),
            "{text}: {}",
            stderr(&refused)
        );
        assert!(
            stderr(&refused).contains(text),
            "{text}: {}",
            stderr(&refused)
        );
    }
    // An expired token never locks out a member: node-a rejoins with it.
    assert!(join("web", &a, &short, Some(regcred)).status.success());

    // The owner sees why each token no longer admits; the list holds no secret.
    let listed = owner_cli(&["token", "list", "web"], &created, regcred);
    let states: Vec<String> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["used up", "expired", "revoked", "valid"]);
    for token in [&created.join, &short, &revoked, &list_only] {
        let secret = token.split(':').nth(1).unwrap().split('.').nth(1).unwrap();
        assert!(!listed.to_string().contains(secret));
    }
    // An owner file with this cluster's name and ID but another credential is refused,
    // and the refusal names the file.
    let forged = dir.path().join("forged.owner");
    let text = std::fs::read_to_string(&created.owner_file).unwrap();
    let other = OwnerSecret::generate(&mut rand::rng());
    std::fs::write(&forged, text.replace(&created.owner, other.expose())).unwrap();
    let refused = xlreg(&[
        "cluster",
        "close",
        "web",
        "--owner-file",
        s(&forged),
        "--regcred",
        s(regcred),
    ]);
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("refused the owner file"),
        "{}",
        stderr(&refused)
    );
    assert!(!stderr(&refused).contains(other.expose()));

    // The list-only token lists.
    let listed = xlreg(&[
        "cluster",
        "members",
        "web",
        "--token",
        &list_only,
        "--regcred",
        s(regcred),
        "--json",
    ]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let doc: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(doc["members"][0]["name"], "node-a");
}

#[tokio::test]
async fn a_proof_replayed_from_another_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let created = create(dir.path(), &server.regcred_path, "web", 3, &[]);
    let join_string = xlreg::join_string::JoinString::parse(&created.join).unwrap();
    let joiner = node(1, "joiner", 1);

    // Session one: a valid proof, captured and never sent.
    let mut first = RawSession::open(&server).await;
    let member = first.member_msg(&joiner);
    let reply = first.call(&member).await;
    let node_id = reply.member_id.clone().unwrap();
    // The same node (same ID, same keys) in every session: only the session differs.
    let joiner = xlreg::node::NodeIdentity {
        id: Some(Id::from_bytes(&node_id).unwrap()),
        ..joiner
    };
    let proof_for = |salt: &[u8]| {
        let input = join_proof_input(
            salt,
            join_string.cluster.as_bytes(),
            join_string.token.id(),
            &JoiningNode {
                id: &node_id,
                comms_key: joiner.comms.public_key().to_spki_der(),
                sig_key: joiner.sig.public_key().to_spki_der(),
                endpoints: &joiner.endpoints,
            },
        );
        join_string.token.key().sign(&input).to_vec()
    };
    let captured = proof_for(&first.server_salt);
    let join_msg = |proof: Vec<u8>| XlRegMsg {
        op: Some(Tag::Join as i32),
        cluster_id: Some(join_string.cluster.as_bytes().to_vec()),
        token_id: Some(join_string.token.id().to_string()),
        token_proof: Some(proof),
        ..XlRegMsg::default()
    };

    // Session two, same node, same token: the captured proof does not verify.
    let mut second = RawSession::open(&server).await;
    let member = second.member_msg(&joiner);
    let reply = second.call(&member).await;
    assert_eq!(reply.member_id.as_deref(), Some(&node_id[..]));
    second.send(&join_msg(captured.clone())).await.unwrap();
    second
        .expect_error("replayed proof", ErrCode::Unauthorized, "is not valid")
        .await;

    // The session it was made for accepts it: the proof itself was good.
    let reply = first.call(&join_msg(captured)).await;
    assert_eq!(reply.op, Some(Tag::JoinReply as i32), "{reply:?}");
}

#[test]
fn the_owner_evicts_a_member_and_a_new_node_takes_the_freed_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = &server.regcred_path;
    let created = create(dir.path(), regcred, "pair", 2, &[]);
    let nodes: Vec<PathBuf> = (0..3)
        .map(|i| node_dir(dir.path(), &format!("node-{i}"), 9000 + i))
        .collect();
    for node in &nodes[..2] {
        assert!(join("pair", node, &created.join, Some(regcred))
            .status
            .success());
    }
    let full = join("pair", &nodes[2], &created.join, Some(regcred));
    assert_eq!(full.status.code(), Some(4), "{}", stderr(&full));

    let evicted = owner_cli(&["evict", "pair", "node-0"], &created, regcred);
    assert_eq!(evicted["cluster"]["member_count"], 1);
    let joined = join("pair", &nodes[2], &created.join, Some(regcred));
    assert!(joined.status.success(), "{}", stderr(&joined));
    assert!(stderr(&joined).contains("as slot 0"), "{}", stderr(&joined));
    assert_eq!(
        members_as_owner(&created, regcred),
        [(0, "node-2".to_string()), (1, "node-1".to_string())]
    );
    // The evicted node is a stranger now: it cannot list the cluster.
    let listed = xlreg(&[
        "cluster",
        "members",
        "pair",
        "--node",
        s(&nodes[0]),
        "--regcred",
        s(regcred),
    ]);
    assert_eq!(listed.status.code(), Some(3), "{}", stderr(&listed));

    // Close, then delete: a closed cluster refuses newcomers, a deleted one is gone.
    owner_cli(&["close", "pair"], &created, regcred);
    owner_cli(&["evict", "pair", "node-1"], &created, regcred);
    let closed = join("pair", &nodes[0], &created.join, Some(regcred));
    assert_eq!(closed.status.code(), Some(5), "{}", stderr(&closed));
    assert!(stderr(&closed).contains("closed"), "{}", stderr(&closed));
    let deleted = owner_cli(&["delete", "pair"], &created, regcred);
    assert_eq!(deleted["deleted"]["name"], "pair");
    let gone = xlreg(&[
        "cluster",
        "members",
        "pair",
        "--node",
        s(&nodes[2]),
        "--regcred",
        s(regcred),
    ]);
    assert_eq!(gone.status.code(), Some(3), "{}", stderr(&gone));
}

#[tokio::test]
async fn a_member_leaves_and_a_waiter_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let nodes: Vec<_> = (0..4).map(|i| node(i, &format!("n{i}"), 1)).collect();
    let (cluster, _, token) =
        owned_cluster(&server, &nodes[0], "trio", 3, &TokenTerms::default()).await;
    let target = ClusterRef::Id(cluster.id.clone());
    let join_as = |i: usize| {
        let (node, target, id, token) = (
            nodes[i].clone(),
            target.clone(),
            cluster.id.clone(),
            token.clone(),
        );
        let server = &server;
        async move {
            let (mut client, node_id) = registered(server, &node).await;
            let (_, slot) = client
                .join_with_token(&target, &id, &token, &node, &node_id)
                .await
                .unwrap();
            (client, slot)
        }
    };
    let (mut waiter, slot) = join_as(0).await;
    assert_eq!(slot, 0);
    let (mut leaver, slot) = join_as(1).await;
    assert_eq!(slot, 1);

    // The waiter holds a listing until the cluster is complete.
    let held = tokio::spawn(async move {
        waiter
            .get_cluster(
                Some(&ClusterRef::Name("trio".into())),
                None,
                Duration::from_secs(30),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = leaver.leave(&target).await.unwrap();
    assert_eq!(left.size, 1);
    let (_c, slot) = join_as(2).await;
    assert_eq!(slot, 1, "the freed slot is the lowest free one");
    let (_d, slot) = join_as(3).await;
    assert_eq!(slot, 2);
    let view = held.await.unwrap().unwrap();
    let names: Vec<_> = view.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["n0", "n2", "n3"], "the waiter sees n1 gone");
}

#[tokio::test]
async fn twenty_racers_with_a_five_use_token_on_a_ten_slot_cluster_exactly_five_join() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(&dir.path().join("data"), &[]));
    let terms = TokenTerms {
        usages: USAGE_JOIN,
        ttl: None,
        uses: Some(5),
    };
    let (cluster, owner, token) =
        owned_cluster(&server, &node(20, "creator", 1), "race", 10, &terms).await;
    let racers: Vec<_> = (0..20).map(|i| node(i, &format!("racer-{i}"), 1)).collect();
    let start = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = racers
        .into_iter()
        .map(|racer| {
            let (server, start, token) = (server.clone(), start.clone(), token.clone());
            let id = cluster.id.clone();
            tokio::spawn(async move {
                let mut client = Client::connect(&server.regcred, DEFAULT_TIMEOUT)
                    .await
                    .unwrap();
                let node_id = client.register(&racer).await.unwrap();
                start.wait().await;
                client
                    .join_with_token(&ClusterRef::Id(id.clone()), &id, &token, &racer, &node_id)
                    .await
            })
        })
        .collect();
    let mut joined = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok((_, slot)) => joined.push(slot),
            Err(ClientError::Refused {
                code: Some(ErrCode::Forbidden),
                description,
                ..
            }) => assert!(description.contains("used up"), "{description}"),
            Err(other) => panic!("unexpected {other}"),
        }
    }
    joined.sort_unstable();
    assert_eq!(joined, [0, 1, 2, 3, 4]);
    let mut client = server.client().await;
    let view = client
        .get_cluster_as_owner(&owner, None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(view.members.len(), 5);
    let mut client = server.client().await;
    let tokens = client.list_tokens(&owner).await.unwrap();
    assert_eq!(tokens[0].uses_left, Some(0));
}

#[tokio::test]
async fn brute_force_is_throttled_and_the_server_stays_responsive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let mut member = node(0, "member", 1);
    let (cluster, owner, token) =
        owned_cluster(&server, &member, "guarded", 4, &TokenTerms::default()).await;
    let (mut client, member_id) = registered(&server, &member).await;
    let target = ClusterRef::Id(cluster.id.clone());
    client
        .join_with_token(&target, &cluster.id, &token, &member, &member_id)
        .await
        .unwrap();
    member.id = Some(member_id.clone());

    let guesser = node(1, "guesser", 1);
    let mut throttled = None;
    for attempt in 0..30 {
        let guess = JoinTokenSecret::parse(&format!(
            "{}.{}",
            token.id(),
            JoinTokenSecret::generate(&mut rand::rng())
                .expose()
                .split('.')
                .nth(1)
                .unwrap()
        ))
        .unwrap();
        let (mut client, id) = registered(&server, &guesser).await;
        match client
            .join_with_token(&target, &cluster.id, &guess, &guesser, &id)
            .await
        {
            Err(ClientError::Refused {
                code: Some(ErrCode::Unauthorized),
                ..
            }) => {}
            Err(ClientError::Refused {
                code: Some(ErrCode::Unavailable),
                description,
                retry_after,
            }) => {
                assert!(
                    description.contains("too many failed proofs"),
                    "{description}"
                );
                assert!(retry_after.is_some());
                throttled = Some(attempt);
                break;
            }
            other => panic!("guess {attempt}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        throttled,
        Some(10),
        "a burst of 10 failures, then throttled"
    );

    // The registry still serves at once what carries no proof: a member rejoins and lists
    // its cluster (a proof from this address, the owner's included, waits for the refill).
    let started = std::time::Instant::now();
    let (mut client, id) = registered(&server, &member).await;
    let (_, slot) = client.join(Some(&target)).await.unwrap();
    assert_eq!((slot, id), (0, member_id));
    let view = client
        .get_cluster(Some(&target), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(view.members.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut client = server.client().await;
    let throttled = refusal(
        client
            .get_cluster_as_owner(&owner, None, Duration::ZERO)
            .await,
    );
    assert_eq!(throttled.0, Some(ErrCode::Unavailable), "{}", throttled.1);
    // Counted by reason: ten failed join proofs, then the throttled requests.
    let metrics = server.metrics_addr();
    wait_for_metric(
        &metrics,
        "xlreg_admission_failures_total{reason=\"join_proof\"}",
        10.0,
    );
    let (_, text) = http_get(&metrics, "/metrics");
    let throttled = metric(
        &text,
        "xlreg_admission_failures_total{reason=\"throttled\"}",
    );
    assert!(throttled >= Some(2.0), "{text}");
}

#[tokio::test]
async fn the_legacy_listener_joins_open_clusters_and_is_refused_on_closed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--legacy-listen", "127.0.0.1:0"]);
    let legacy = RegCred::read(data.join("legacy").join("regCred.dat")).unwrap();
    create(dir.path(), &server.regcred_path, "guarded", 3, &[]);
    let open = xlreg(&[
        "cluster",
        "create",
        "public",
        "--open",
        "--size",
        "3",
        "--regcred",
        s(&server.regcred_path),
    ]);
    assert!(open.status.success(), "{}", stderr(&open));

    let member = LegacyMember::new(0, "go-node");
    let mut client = LegacyClient::connect(&legacy).await;
    client.member(&member).await;
    expect(client.call(&join_by_name("public")).await, Tag::JoinReply);
    client.bye().await;
    let mut client = LegacyClient::connect(&legacy).await;
    client.member(&member).await;
    let reply = client.call(&join_by_name("guarded")).await;
    expect_error(&mut client, reply, "no such cluster").await;
}

#[test]
fn secrets_appear_in_no_log_line_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&dir.path().join("data"), &[], &[("RUST_LOG", "trace")]);
    let regcred = server.regcred_path.clone();
    let mut logs = String::new();
    let mut run = |args: &[&str]| -> Output {
        let output = Command::new(common::xlreg_bin())
            .args(args)
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        logs.push_str(&stderr(&output));
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        output
    };
    let owner_file = dir.path().join("web.owner");
    let created = run(&[
        "cluster",
        "create",
        "web",
        "--size",
        "3",
        "--regcred",
        s(&regcred),
        "--owner-file",
        s(&owner_file),
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let owner = doc["owner"].as_str().unwrap().to_string();
    let first = doc["join_token"].as_str().unwrap().to_string();
    let owner_args = ["--owner-file", s(&owner_file), "--regcred", s(&regcred)];
    let minted = run(&[
        &[
            "cluster",
            "token",
            "create",
            "web",
            "--usage",
            "join,list",
            "--json",
        ][..],
        &owner_args,
    ]
    .concat());
    let doc: serde_json::Value = serde_json::from_slice(&minted.stdout).unwrap();
    let second = doc["join_token"].as_str().unwrap().to_string();
    let a = node_dir(dir.path(), "node-a", 9001);
    let b = node_dir(dir.path(), "node-b", 9002);
    run(&[
        "cluster",
        "join",
        "web",
        "--node",
        s(&a),
        "--token",
        &first,
        "--wait",
        "0",
    ]);
    run(&[
        "cluster",
        "join",
        "web",
        "--node",
        s(&b),
        "--token",
        &second,
        "--wait",
        "0",
    ]);
    run(&["cluster", "members", "web", "--token", &second]);
    run(&[&["cluster", "members", "web"][..], &owner_args].concat());
    run(&[&["cluster", "token", "list", "web"][..], &owner_args].concat());
    let tid = doc["token"]["id"].as_str().unwrap();
    run(&[&["cluster", "token", "revoke", "web", tid][..], &owner_args].concat());
    run(&[
        "cluster",
        "leave",
        "web",
        "--node",
        s(&b),
        "--regcred",
        s(&regcred),
    ]);
    run(&[&["cluster", "evict", "web", "node-a"][..], &owner_args].concat());
    run(&[&["cluster", "close", "web"][..], &owner_args].concat());
    run(&[&["cluster", "delete", "web"][..], &owner_args].concat());

    let server_log = server.log_text();
    assert!(
        server_log.contains("TRACE"),
        "trace logging is on:\n{server_log}"
    );
    let secret_of = |join: &str| {
        join.split(':')
            .nth(1)
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .to_string()
    };
    for secret in [owner, secret_of(&first), secret_of(&second)] {
        assert!(
            !server_log.contains(&secret),
            "the registry logged a secret"
        );
        assert!(!logs.contains(&secret), "the CLI logged a secret");
    }
}
