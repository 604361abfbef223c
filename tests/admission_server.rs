//! Admission (docs/protocol.md section 14), server side, through real `xlreg serve`
//! processes on loopback sockets: raw xlReg/2 sessions make the proofs with the one
//! derivation of `xlreg::model::admission`, as a client would.

mod common;

use std::time::Duration;

use common::{node, RawSession, Server};
use tempfile::TempDir;
use xlreg::id::Id;
use xlreg::model::admission::{
    join_proof_input, list_proof_input, owner_proof_input, JoinTokenSecret, JoiningNode, OwnerOp,
    OwnerSecret,
};
use xlreg::node::NodeIdentity;
use xlreg::proto::{ErrCode, JoinToken, Tag, XlRegMsg};

const OWNER: &str = "abcdefghijklmnopqrstuvwxyz234567";
const FIRST: &str = "first1.abcdefghijklmnopqrstuvwxyz";

fn owner() -> OwnerSecret {
    OwnerSecret::parse(OWNER).unwrap()
}

fn token(text: &str) -> JoinTokenSecret {
    JoinTokenSecret::parse(text).unwrap()
}

fn start() -> (TempDir, Server) {
    let dir = TempDir::new().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    (dir, server)
}

/// The spec of a token to store: join usage unless `usages` says otherwise.
fn token_spec(
    t: &JoinTokenSecret,
    usages: u32,
    ttl_ms: Option<u64>,
    uses: Option<u32>,
) -> JoinToken {
    JoinToken {
        id: Some(t.id().to_string()),
        verifier_key: Some(t.key().verifier().to_vec()),
        usages: Some(usages),
        ttl_ms,
        uses,
        ..JoinToken::default()
    }
}

/// A Create of `name` (size `size`) owned by [`OWNER`] with the first token [`FIRST`].
fn owned_create(s: &RawSession, name: &str, size: u32, open: bool) -> XlRegMsg {
    let owner_key = owner().key();
    let first = token(FIRST);
    let input = owner_proof_input(
        &s.server_salt,
        OwnerOp::Create,
        name.as_bytes(),
        &owner_key.verifier(),
        first.id().as_bytes(),
    );
    XlRegMsg {
        op: Some(Tag::Create as i32),
        cluster_name: Some(name.to_string()),
        cluster_max_size: Some(size),
        owner_key: Some(owner_key.verifier().to_vec()),
        owner_sig: Some(owner_key.sign(&input).to_vec()),
        open: Some(open),
        new_token: Some(token_spec(&first, 1, None, None)),
        ..XlRegMsg::default()
    }
}

/// Registers a node in a new session; returns the session and the node's ID.
async fn as_node(server: &Server, n: &NodeIdentity) -> (RawSession, Id) {
    let mut s = RawSession::open(server).await;
    let id = s.register(n).await;
    (s, id)
}

/// Node `key` named `name`, registered once, so that later sessions are the same node (a
/// node without an ID is issued a new one each time).
async fn registered(server: &Server, key: usize, name: &str) -> NodeIdentity {
    let mut n = node(key, name, 1);
    let (_, id) = as_node(server, &n).await;
    n.id = Some(id);
    n
}

/// Creates the owned, admission-controlled cluster `name`; returns its ID.
async fn create_owned(server: &Server, name: &str, size: u32) -> Vec<u8> {
    let (mut s, _) = as_node(server, &node(0, "creator", 1)).await;
    let msg = owned_create(&s, name, size, false);
    let reply = s.call(&msg).await;
    assert_eq!(reply.op, Some(Tag::CreateReply as i32), "{reply:?}");
    assert_eq!((reply.open, reply.closed), (Some(false), Some(false)));
    reply.cluster_id.unwrap()
}

/// A Join of `cluster` by `n` (registered as `id` in `s`) with a proof by `t`.
fn join_with(
    s: &RawSession,
    cluster: &[u8],
    n: &NodeIdentity,
    id: &Id,
    t: &JoinTokenSecret,
) -> XlRegMsg {
    let comms = n.comms.public_key().to_spki_der();
    let sig = n.sig.public_key().to_spki_der();
    let joining = JoiningNode {
        id: id.as_bytes(),
        comms_key: comms,
        sig_key: sig,
        endpoints: &n.endpoints,
    };
    let input = join_proof_input(&s.server_salt, cluster, t.id(), &joining);
    XlRegMsg {
        op: Some(Tag::Join as i32),
        cluster_id: Some(cluster.to_vec()),
        token_id: Some(t.id().to_string()),
        token_proof: Some(t.key().sign(&input).to_vec()),
        ..XlRegMsg::default()
    }
}

/// An owner request `tag` for `op` on `cluster`, with arguments `a` and `b`.
fn owner_msg(
    s: &RawSession,
    tag: Tag,
    op: OwnerOp,
    cluster: &[u8],
    a: &[u8],
    b: &[u8],
) -> XlRegMsg {
    let input = owner_proof_input(&s.server_salt, op, cluster, a, b);
    XlRegMsg {
        op: Some(tag as i32),
        cluster_id: Some(cluster.to_vec()),
        owner_sig: Some(owner().key().sign(&input).to_vec()),
        ..XlRegMsg::default()
    }
}

/// Mints `t` on `cluster` as the owner, in a session without a node.
async fn mint(
    server: &Server,
    cluster: &[u8],
    t: &JoinTokenSecret,
    usages: u32,
    ttl_ms: Option<u64>,
    uses: Option<u32>,
) {
    let mut s = RawSession::open(server).await;
    let verifier = t.key().verifier();
    let mut msg = owner_msg(
        &s,
        Tag::MintToken,
        OwnerOp::Mint,
        cluster,
        t.id().as_bytes(),
        &verifier,
    );
    msg.new_token = Some(token_spec(t, usages, ttl_ms, uses));
    let reply = s.call(&msg).await;
    assert_eq!(reply.op, Some(Tag::TokenList as i32), "{reply:?}");
    let info = &reply.token_infos[0];
    assert_eq!(info.id.as_deref(), Some(t.id()));
    assert_eq!(info.verifier_key, None, "a reply never carries a verifier");
}

/// Joins `n` to `cluster` with `t` in a new session: the slot.
async fn join_ok(server: &Server, cluster: &[u8], n: &NodeIdentity, t: &JoinTokenSecret) -> u32 {
    let (mut s, id) = as_node(server, n).await;
    let msg = join_with(&s, cluster, n, &id, t);
    let reply = s.call(&msg).await;
    assert_eq!(reply.op, Some(Tag::JoinReply as i32), "{reply:?}");
    reply.slot.unwrap()
}

fn get_by_id(cluster: &[u8]) -> XlRegMsg {
    XlRegMsg {
        op: Some(Tag::GetCluster as i32),
        cluster_id: Some(cluster.to_vec()),
        ..XlRegMsg::default()
    }
}

fn by_name(tag: Tag, name: &str) -> XlRegMsg {
    XlRegMsg {
        op: Some(tag as i32),
        cluster_name: Some(name.to_string()),
        ..XlRegMsg::default()
    }
}

#[tokio::test]
async fn a_stranger_can_neither_list_nor_join_nor_squat_nor_tell_whether_it_exists() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "web", 3).await;
    let stranger = node(1, "stranger", 1);
    let cases: Vec<(&str, XlRegMsg, &str)> = vec![
        (
            "list by name",
            by_name(Tag::GetCluster, "web"),
            "no such cluster: web",
        ),
        (
            "list a missing name",
            by_name(Tag::GetCluster, "nothere"),
            "no such cluster: nothere",
        ),
        ("list by ID", get_by_id(&cluster), "no such cluster: "),
        (
            "list a missing ID",
            get_by_id(&[7; 32]),
            "no such cluster: ",
        ),
        (
            "join by name",
            by_name(Tag::Join, "web"),
            "no such cluster: web",
        ),
        (
            "join a missing name",
            by_name(Tag::Join, "nothere"),
            "no such cluster: nothere",
        ),
    ];
    for (case, msg, text) in cases {
        let (mut s, _) = as_node(&server, &stranger).await;
        s.send(&msg).await.unwrap();
        s.expect_error(case, ErrCode::NotFound, text).await;
    }
    // Squatting: a Create of the name returns nothing of the cluster.
    let (mut s, _) = as_node(&server, &stranger).await;
    let mut squat = by_name(Tag::Create, "web");
    squat.cluster_max_size = Some(3);
    s.send(&squat).await.unwrap();
    s.expect_error("squat", ErrCode::Conflict, "cluster name web is taken")
        .await;
    // Another owner, too.
    let (mut s, _) = as_node(&server, &stranger).await;
    let other = OwnerSecret::parse("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
        .unwrap()
        .key();
    let input = owner_proof_input(
        &s.server_salt,
        OwnerOp::Create,
        b"web",
        &other.verifier(),
        b"",
    );
    let msg = XlRegMsg {
        owner_key: Some(other.verifier().to_vec()),
        owner_sig: Some(other.sign(&input).to_vec()),
        ..squat.clone()
    };
    s.send(&msg).await.unwrap();
    s.expect_error(
        "other owner",
        ErrCode::Conflict,
        "cluster name web is taken",
    )
    .await;
    // The owner's retry gets its cluster back.
    let (mut s, _) = as_node(&server, &node(0, "creator", 1)).await;
    let retry = owned_create(&s, "web", 3, false);
    let reply = s.call(&retry).await;
    assert_eq!(reply.cluster_id.as_deref(), Some(&cluster[..]));
}

#[tokio::test]
async fn a_token_holder_joins_and_then_acts_as_a_member() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "web", 3).await;
    let n = registered(&server, 1, "n1").await;
    let (mut s, id) = as_node(&server, &n).await;
    let joined = s
        .call(&join_with(&s, &cluster, &n, &id, &token(FIRST)))
        .await;
    assert_eq!(
        (joined.op, joined.slot),
        (Some(Tag::JoinReply as i32), Some(0))
    );
    // Now a member: it lists the cluster, without any proof.
    let listed = s.call(&get_by_id(&cluster)).await;
    assert_eq!(listed.op, Some(Tag::ClusterMembers as i32), "{listed:?}");
    assert_eq!(listed.tokens.len(), 1);
    // And rejoins in a later session without a token.
    let (mut s, _) = as_node(&server, &n).await;
    let again = s.call(&by_name(Tag::Join, "web")).await;
    assert_eq!(again.slot, Some(0), "{again:?}");
}

#[tokio::test]
async fn expired_revoked_and_used_up_tokens_are_refused_with_a_clear_error() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "web", 8).await;
    let once = token("once01.abcdefghijklmnopqrstuvwxyz");
    mint(&server, &cluster, &once, 1, None, Some(1)).await;
    let gone = token("gone01.abcdefghijklmnopqrstuvwxyz");
    mint(&server, &cluster, &gone, 1, None, None).await;
    let listing = token("list01.abcdefghijklmnopqrstuvwxyz");
    mint(&server, &cluster, &listing, 2, None, None).await;
    // Minted last: minting drops expired tokens.
    let short = token("short1.abcdefghijklmnopqrstuvwxyz");
    mint(&server, &cluster, &short, 1, Some(1), None).await;
    // Revoke `gone`.
    let mut s = RawSession::open(&server).await;
    let mut revoke = owner_msg(
        &s,
        Tag::RevokeToken,
        OwnerOp::Revoke,
        &cluster,
        b"gone01",
        b"",
    );
    revoke.token_id = Some("gone01".into());
    let reply = s.call(&revoke).await;
    assert_eq!(reply.token_infos[0].revoked, Some(true), "{reply:?}");
    tokio::time::sleep(Duration::from_millis(5)).await;

    assert_eq!(join_ok(&server, &cluster, &node(1, "a", 1), &once).await, 0);
    let cases = [
        (2, &short, "join token short1 has expired"),
        (3, &once, "join token once01 is used up"),
        (4, &gone, "join token gone01 was revoked"),
        (5, &listing, "join token list01 does not allow joining"),
    ];
    for (key, t, text) in cases {
        let n = node(key, &format!("n{key}"), 1);
        let (mut s, id) = as_node(&server, &n).await;
        s.send(&join_with(&s, &cluster, &n, &id, t)).await.unwrap();
        s.expect_error(text, ErrCode::Forbidden, text).await;
    }
    // The owner's list shows every token, never a secret nor a verifier.
    let mut s = RawSession::open(&server).await;
    let list = s
        .call(&owner_msg(
            &s,
            Tag::ListTokens,
            OwnerOp::ListTokens,
            &cluster,
            b"",
            b"",
        ))
        .await;
    let ids: Vec<_> = list
        .token_infos
        .iter()
        .map(|t| t.id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["first1", "once01", "gone01", "list01", "short1"]);
    assert_eq!(list.token_infos[1].uses_left, Some(0));
    assert!(list.token_infos.iter().all(|t| t.verifier_key.is_none()));
}

#[tokio::test]
async fn a_proof_replayed_from_another_session_is_refused() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "web", 3).await;
    let n = node(1, "n1", 1);
    let (first, id) = as_node(&server, &n).await;
    let captured = join_with(&first, &cluster, &n, &id, &token(FIRST));
    let (mut second, _) = as_node(&server, &n).await;
    second.send(&captured).await.unwrap();
    second
        .expect_error(
            "replay",
            ErrCode::Unauthorized,
            "join token first1 is not valid for cluster",
        )
        .await;
    // A wrong secret under the right id: the same answer, and the same for a missing cluster.
    let forged = token("first1.zzzzzzzzzzzzzzzzzzzzzzzzzz");
    for target in [cluster.clone(), vec![9; 32]] {
        let (mut s, id) = as_node(&server, &n).await;
        s.send(&join_with(&s, &target, &n, &id, &forged))
            .await
            .unwrap();
        s.expect_error(
            "forged",
            ErrCode::Unauthorized,
            "join token first1 is not valid for cluster",
        )
        .await;
    }
}

#[tokio::test]
async fn the_owner_evicts_a_member_and_a_new_node_takes_the_freed_slot() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "pair", 2).await;
    let a = registered(&server, 1, "a").await;
    assert_eq!(join_ok(&server, &cluster, &a, &token(FIRST)).await, 0);
    assert_eq!(
        join_ok(&server, &cluster, &node(2, "b", 1), &token(FIRST)).await,
        1
    );
    let a_id = a.id.clone().unwrap();
    let mut s = RawSession::open(&server).await;
    let mut evict = owner_msg(
        &s,
        Tag::Evict,
        OwnerOp::Evict,
        &cluster,
        a_id.as_bytes(),
        b"",
    );
    evict.member_id = Some(a_id.as_bytes().to_vec());
    let done = s.call(&evict).await;
    assert_eq!(
        (done.op, done.cluster_size),
        (Some(Tag::Done as i32), Some(1)),
        "{done:?}"
    );
    assert_eq!(
        join_ok(&server, &cluster, &node(3, "c", 1), &token(FIRST)).await,
        0
    );
    // Listed in slot order: c (slot 0) before b (slot 1).
    let mut s = RawSession::open(&server).await;
    let listed = s
        .call(&owner_msg(
            &s,
            Tag::GetCluster,
            OwnerOp::Get,
            &cluster,
            b"",
            b"",
        ))
        .await;
    let names: Vec<_> = listed
        .tokens
        .iter()
        .map(|t| t.name.clone().unwrap())
        .collect();
    assert_eq!(
        (names, listed.which),
        (vec!["c".to_string(), "b".to_string()], Some(0b11))
    );
    // The evicted node is a stranger now.
    let (mut s, _) = as_node(&server, &a).await;
    s.send(&get_by_id(&cluster)).await.unwrap();
    s.expect_error("evicted", ErrCode::NotFound, "no such cluster")
        .await;
}

#[tokio::test]
async fn a_member_leaves_and_a_waiter_sees_it() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "trio", 3).await;
    let a = registered(&server, 1, "a").await;
    let b = registered(&server, 2, "b").await;
    assert_eq!(join_ok(&server, &cluster, &a, &token(FIRST)).await, 0);
    assert_eq!(join_ok(&server, &cluster, &b, &token(FIRST)).await, 1);
    // a waits for all three slots.
    let (mut waiter, _) = as_node(&server, &a).await;
    let mut wait = get_by_id(&cluster);
    wait.wait_ms = Some(20_000);
    waiter.send(&wait).await.unwrap();
    // b leaves: its slot is free.
    let (mut s, _) = as_node(&server, &b).await;
    let left = s.call(&by_name(Tag::Leave, "trio")).await;
    assert_eq!(
        (left.op, left.cluster_size),
        (Some(Tag::Done as i32), Some(1)),
        "{left:?}"
    );
    // c takes slot 1, b's; the waiter's reply, once all three are in, lists a, c and d.
    assert_eq!(
        join_ok(&server, &cluster, &node(3, "c", 1), &token(FIRST)).await,
        1
    );
    assert_eq!(
        join_ok(&server, &cluster, &node(4, "d", 1), &token(FIRST)).await,
        2
    );
    let reply = waiter.recv().await;
    let names: Vec<_> = reply
        .tokens
        .iter()
        .map(|t| t.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "c", "d"], "{reply:?}");
}

#[tokio::test]
async fn an_expired_token_or_a_closed_cluster_never_locks_out_a_member() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "web", 4).await;
    let short = token("short1.abcdefghijklmnopqrstuvwxyz");
    mint(&server, &cluster, &short, 1, Some(300), None).await;
    let n = registered(&server, 1, "n1").await;
    assert_eq!(join_ok(&server, &cluster, &n, &short).await, 0);
    let mut s = RawSession::open(&server).await;
    let closed = s
        .call(&owner_msg(
            &s,
            Tag::CloseCluster,
            OwnerOp::Close,
            &cluster,
            b"",
            b"",
        ))
        .await;
    assert_eq!(closed.closed, Some(true), "{closed:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The member rejoins with its expired token's proof, or with none.
    let (mut s, id) = as_node(&server, &n).await;
    let again = s.call(&join_with(&s, &cluster, &n, &id, &short)).await;
    assert_eq!(again.slot, Some(0), "{again:?}");
    // A new node with a valid token: the cluster is closed.
    let m = node(2, "m", 1);
    let (mut s, id) = as_node(&server, &m).await;
    s.send(&join_with(&s, &cluster, &m, &id, &token(FIRST)))
        .await
        .unwrap();
    s.expect_error(
        "closed",
        ErrCode::Forbidden,
        "cluster web is closed to new members",
    )
    .await;
}

#[tokio::test]
async fn list_tokens_and_the_owner_see_members_without_a_node_strangers_do_not() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "web", 3).await;
    assert_eq!(
        join_ok(&server, &cluster, &node(1, "a", 1), &token(FIRST)).await,
        0
    );
    let lister = token("list01.abcdefghijklmnopqrstuvwxyz");
    mint(&server, &cluster, &lister, 2, None, None).await;
    let list_msg = |s: &RawSession, t: &JoinTokenSecret| XlRegMsg {
        token_id: Some(t.id().to_string()),
        token_proof: Some(
            t.key()
                .sign(&list_proof_input(&s.server_salt, &cluster, t.id()))
                .to_vec(),
        ),
        ..get_by_id(&cluster)
    };
    let mut s = RawSession::open(&server).await;
    let listed = s.call(&list_msg(&s, &lister)).await;
    assert_eq!(listed.tokens.len(), 1, "{listed:?}");
    let mut s = RawSession::open(&server).await;
    let as_owner = s
        .call(&owner_msg(
            &s,
            Tag::GetCluster,
            OwnerOp::Get,
            &cluster,
            b"",
            b"",
        ))
        .await;
    assert_eq!(as_owner.tokens.len(), 1, "{as_owner:?}");
    // A join-only token does not list.
    let mut s = RawSession::open(&server).await;
    s.send(&list_msg(&s, &token(FIRST))).await.unwrap();
    s.expect_error("join-only", ErrCode::Forbidden, "does not allow listing")
        .await;
    // A stranger's owner request on a real and a missing cluster: the same answer.
    let stranger = OwnerSecret::parse("cccccccccccccccccccccccccccccccc")
        .unwrap()
        .key();
    for target in [cluster.clone(), vec![8; 32]] {
        let mut s = RawSession::open(&server).await;
        let input = owner_proof_input(&s.server_salt, OwnerOp::Delete, &target, b"", b"");
        let msg = XlRegMsg {
            op: Some(Tag::DeleteCluster as i32),
            cluster_id: Some(target.clone()),
            owner_sig: Some(stranger.sign(&input).to_vec()),
            ..XlRegMsg::default()
        };
        s.send(&msg).await.unwrap();
        s.expect_error(
            "stranger owner",
            ErrCode::Unauthorized,
            "owner proof does not verify",
        )
        .await;
    }
    // Without a node and without a proof, GetCluster is not allowed yet.
    let mut s = RawSession::open(&server).await;
    s.send(&get_by_id(&cluster)).await.unwrap();
    s.expect_error("no node", ErrCode::InvalidState, "send Member first")
        .await;
}

#[tokio::test]
async fn the_owner_deletes_a_cluster_and_its_name_is_free() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "web", 3).await;
    let mut s = RawSession::open(&server).await;
    let done = s
        .call(&owner_msg(
            &s,
            Tag::DeleteCluster,
            OwnerOp::Delete,
            &cluster,
            b"",
            b"",
        ))
        .await;
    assert_eq!(done.op, Some(Tag::Done as i32), "{done:?}");
    let (mut s, _) = as_node(&server, &node(1, "x", 1)).await;
    let mut open = by_name(Tag::Create, "web");
    open.cluster_max_size = Some(2);
    let created = s.call(&open).await;
    assert_eq!(created.op, Some(Tag::CreateReply as i32), "{created:?}");
    assert_ne!(created.cluster_id.as_deref(), Some(&cluster[..]));
    assert_eq!(created.open, Some(true));
}

#[tokio::test]
async fn open_clusters_admit_and_show_as_before() {
    let (_dir, server) = start();
    let (mut s, _) = as_node(&server, &node(0, "creator", 1)).await;
    let created = s.call(&owned_create(&s, "pub", 3, true)).await;
    let cluster = created.cluster_id.unwrap();
    let (mut s, _) = as_node(&server, &node(1, "any", 1)).await;
    let listed = s.call(&by_name(Tag::GetCluster, "pub")).await;
    assert_eq!(listed.op, Some(Tag::ClusterMembers as i32), "{listed:?}");
    let joined = s.call(&by_name(Tag::Join, "pub")).await;
    assert_eq!(joined.slot, Some(0), "{joined:?}");
    // Its owner may still close it.
    let mut s = RawSession::open(&server).await;
    let closed = s
        .call(&owner_msg(
            &s,
            Tag::CloseCluster,
            OwnerOp::Close,
            &cluster,
            b"",
            b"",
        ))
        .await;
    assert_eq!(closed.closed, Some(true));
    let (mut s, _) = as_node(&server, &node(2, "late", 1)).await;
    s.send(&by_name(Tag::Join, "pub")).await.unwrap();
    s.expect_error("closed", ErrCode::Forbidden, "closed to new members")
        .await;
}

#[tokio::test]
async fn hostile_admission_fields_are_refused_without_a_change() {
    let (_dir, server) = start();
    let cluster = create_owned(&server, "web", 3).await;
    let n = node(1, "n1", 1);
    let long_tid = "a".repeat(17);
    type MakeMsg = Box<dyn Fn(&RawSession) -> XlRegMsg>;
    let cases: Vec<(&str, MakeMsg, &str)> = vec![
        (
            "short proof",
            Box::new(|_s: &RawSession| XlRegMsg {
                token_id: Some("first1".into()),
                token_proof: Some(vec![1; 63]),
                ..by_name(Tag::Join, "web")
            }),
            "TokenProof must be 64 bytes",
        ),
        (
            "long tid",
            Box::new(move |_s: &RawSession| XlRegMsg {
                token_id: Some(long_tid.clone()),
                token_proof: Some(vec![1; 64]),
                ..by_name(Tag::Join, "web")
            }),
            "TokenId",
        ),
        (
            "proof without tid",
            Box::new(|_s: &RawSession| XlRegMsg {
                token_proof: Some(vec![1; 64]),
                ..by_name(Tag::Join, "web")
            }),
            "go together",
        ),
        (
            "owner key of 31 bytes",
            Box::new(|_s: &RawSession| XlRegMsg {
                cluster_max_size: Some(2),
                owner_key: Some(vec![1; 31]),
                owner_sig: Some(vec![1; 64]),
                ..by_name(Tag::Create, "other")
            }),
            "OwnerKey must be 32 bytes",
        ),
        (
            "token usages 4",
            Box::new(|s: &RawSession| {
                let mut msg = owned_create(s, "other", 2, false);
                msg.new_token.as_mut().unwrap().usages = Some(4);
                msg
            }),
            "Usages 4",
        ),
        (
            "owner request without OwnerSig",
            Box::new(|_s: &RawSession| by_name(Tag::CloseCluster, "web")),
            "needs an OwnerSig",
        ),
    ];
    for (case, msg, text) in cases {
        let (mut s, _) = as_node(&server, &n).await;
        let msg = msg(&s);
        s.send(&msg).await.unwrap();
        s.expect_error(case, ErrCode::BadRequest, text).await;
    }
    // Nothing changed: the cluster has no members and "other" does not exist.
    assert_eq!(join_ok(&server, &cluster, &n, &token(FIRST)).await, 0);
    let (mut s, _) = as_node(&server, &n).await;
    s.send(&by_name(Tag::GetCluster, "other")).await.unwrap();
    s.expect_error("other", ErrCode::NotFound, "no such cluster")
        .await;
}

#[tokio::test]
async fn failed_proofs_are_throttled_counted_and_the_registry_stays_responsive() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let cluster = create_owned(&server, "web", 3).await;
    let member = registered(&server, 1, "member").await;
    assert_eq!(join_ok(&server, &cluster, &member, &token(FIRST)).await, 0);
    let guess = token("first1.zzzzzzzzzzzzzzzzzzzzzzzzzz");
    let n = node(2, "guesser", 1);
    for attempt in 0..10 {
        let (mut s, id) = as_node(&server, &n).await;
        s.send(&join_with(&s, &cluster, &n, &id, &guess))
            .await
            .unwrap();
        s.expect_error(
            &format!("guess {attempt}"),
            ErrCode::Unauthorized,
            "is not valid",
        )
        .await;
    }
    // The eleventh is refused before its proof is looked at, and says when to retry.
    let (mut s, id) = as_node(&server, &n).await;
    s.send(&join_with(&s, &cluster, &n, &id, &token(FIRST)))
        .await
        .unwrap();
    let refused = s.recv().await;
    assert_eq!(
        refused.err_kind,
        Some(ErrCode::Unavailable as i32),
        "{refused:?}"
    );
    let text = refused.err_desc.unwrap();
    assert!(
        text.contains("too many failed proofs from this address"),
        "{text}"
    );
    assert!(refused.retry_after_ms.unwrap() > 0);
    // Requests without proofs are served: a member rejoins, open clusters work.
    let (mut s, _) = as_node(&server, &member).await;
    let again = s.call(&by_name(Tag::Join, "web")).await;
    assert_eq!(again.slot, Some(0), "{again:?}");
    let metrics = server.metrics_addr();
    common::wait_for_metric(
        &metrics,
        r#"xlreg_admission_failures_total{reason="join_proof"}"#,
        10.0,
    );
    common::wait_for_metric(
        &metrics,
        r#"xlreg_admission_failures_total{reason="throttled"}"#,
        1.0,
    );
}

#[tokio::test]
async fn no_secret_reaches_the_log_at_trace() {
    let dir = TempDir::new().unwrap();
    let server = Server::start_with_env(&dir.path().join("data"), &[], &[("RUST_LOG", "trace")]);
    let cluster = create_owned(&server, "web", 3).await;
    let n = node(1, "n1", 1);
    assert_eq!(join_ok(&server, &cluster, &n, &token(FIRST)).await, 0);
    let (mut s, id) = as_node(&server, &n).await;
    let bad = token("first1.zzzzzzzzzzzzzzzzzzzzzzzzzz");
    let attempt = join_with(&s, &cluster, &n, &id, &bad);
    s.send(&attempt).await.unwrap();
    s.expect_error("bad", ErrCode::Unauthorized, "is not valid")
        .await;
    let log = server.log_text();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "trace logging is on"
    );
    let proof = hex::encode(attempt.token_proof.unwrap());
    for secret in [
        OWNER,
        "abcdefghijklmnopqrstuvwxyz",
        "zzzzzzzzzzzzzzzzzzzzzzzzzz",
        &proof,
        &hex::encode(owner().key().verifier()),
    ] {
        assert!(!log.contains(secret), "{secret} is in the log");
    }
}

/// The pin of a registry's credentials (docs/protocol.md section 14.10).
fn pin_of(cred: &xlreg::regcred::RegCred) -> [u8; 32] {
    xlreg::model::admission::regcred_pin(
        cred.id.as_bytes(),
        cred.comms_key.to_spki_der(),
        cred.sig_key.to_spki_der(),
    )
}

/// Fetches the registry's credentials (section 14.10): the frame `00000008 "XLRC" 00000001`,
/// answered with one frame of regCred.dat text, then the close.
async fn fetch_regcred(server: &Server) -> xlreg::regcred::RegCred {
    let mut conn = common::RawConn::connect(&server.endpoint()).await;
    conn.send_raw(&[0, 0, 0, 8, b'X', b'L', b'R', b'C', 0, 0, 0, 1])
        .await
        .unwrap();
    let common::Heard::Frame(text) = conn.hear().await else {
        panic!("no credentials")
    };
    conn.expect_silent_close("after the credentials").await;
    xlreg::regcred::RegCred::parse(std::str::from_utf8(&text).unwrap()).unwrap()
}

#[tokio::test]
async fn a_node_with_only_a_pin_fetches_and_checks_the_registrys_credentials() {
    let (_dir, server) = start();
    let fetched = fetch_regcred(&server).await;
    assert_eq!(pin_of(&fetched), pin_of(&server.regcred));
    assert_eq!(fetched, server.regcred);
    // A session with the fetched keys works (version 3: their signature verified).
    let mut client = xlreg::client::Client::connect(&fetched, xlreg::client::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(client.version(), 3);
    client.register(&node(1, "n", 1)).await.unwrap();
    // After an online key rotation the fetch serves the rewritten file (both key sets),
    // with the same pin: the pin covers the RSA keys, not the rotating ones.
    let output = common::xlreg(&[
        "admin",
        "rotate-handshake-keys",
        "--overlap",
        "1h",
        "--data-dir",
        server.dir.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    let rotated = fetch_regcred(&server).await;
    assert_eq!(
        rotated,
        xlreg::regcred::RegCred::read(&server.regcred_path).unwrap()
    );
    assert!(rotated.handshake_previous.is_some());
    assert_ne!(rotated.handshake, fetched.handshake);
    assert_eq!(pin_of(&rotated), pin_of(&fetched));
    // Any other 8-byte first frame is closed unanswered.
    let mut conn = common::RawConn::connect(&server.endpoint()).await;
    conn.send_raw(&[0, 0, 0, 8, b'X', b'L', b'R', b'C', 0, 0, 0, 2])
        .await
        .unwrap();
    conn.expect_silent_close("another version").await;
}

#[tokio::test]
async fn legacy_clients_join_open_clusters_and_are_refused_on_admission_controlled_ones() {
    use common::legacy_client::{
        create_msg, expect, expect_error, get_msg, join_by_id, LegacyClient, LegacyMember,
    };
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--legacy-listen", "127.0.0.1:0"]);
    let cred = xlreg::regcred::RegCred::read(data.join("legacy").join("regCred.dat")).unwrap();
    let closed = create_owned(&server, "web", 3).await;
    // A 1.9 client creates an open cluster and joins it.
    let go = LegacyMember::new(1, "go");
    let mut c = LegacyClient::connect(&cred).await;
    c.member(&go).await;
    let created = expect(c.call(&create_msg("pub", 3)).await, Tag::CreateReply);
    let open = created.cluster_id.unwrap();
    expect(c.call(&join_by_id(&open)).await, Tag::JoinReply);
    expect(c.call(&get_msg(&open, u64::MAX)).await, Tag::ClusterMembers);
    // The admission-controlled cluster is a stranger's to it: not listed...
    let reply = c.call(&get_msg(&closed, u64::MAX)).await;
    expect_error(&mut c, reply, "no such cluster").await;
    // ...not joined, and its name not taken over.
    let mut c = LegacyClient::connect(&cred).await;
    c.member(&go).await;
    let reply = c.call(&join_by_id(&closed)).await;
    expect_error(&mut c, reply, "no such cluster").await;
    let mut c = LegacyClient::connect(&cred).await;
    c.member(&go).await;
    let reply = c.call(&create_msg("web", 3)).await;
    expect_error(&mut c, reply, "cluster name web is taken").await;
}

#[tokio::test]
async fn the_operator_sees_policy_and_tokens_but_no_secret() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    create_owned(&server, "web", 3).await;
    let out = common::xlreg(&[
        "admin",
        "cluster",
        "web",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let text = common::stdout(&out);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    assert!(
        text.contains("policy: admission-controlled, owner set"),
        "{text}"
    );
    assert!(text.contains("token first1: join, expires "), "{text}");
    assert!(!text.contains("abcdefghijklmnopqrstuvwxyz"), "{text}");
    let out = common::xlreg(&[
        "admin",
        "cluster",
        "web",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(json["admission"]["open"], false);
    assert_eq!(json["admission"]["tokens"][0]["id"], "first1");
}
