//! The client side of admission control (docs/protocol.md section 14): creating a cluster
//! with an owner and a first join token, joining and listing with a token's proof, the
//! owner's requests, leaving, and reaching a registry from a join string alone.
//!
//! Every secret (the owner credential, each token's secret) is made here, by the caller's
//! random number generator, and never sent: a request carries the verifier derived from it
//! ([`crate::model::admission`]) or a proof signed for this session, over this session's
//! binding. Owner requests and token listings need no node of the caller's own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::connection::Connection;
use crate::frame::MAX_FRAME_LEN;
use crate::id::Id;
use crate::join_string::JoinString;
use crate::model::admission::{
    join_proof_input, list_proof_input, owner_proof_input, regcred_pin, JoinTokenSecret,
    JoiningNode, OwnerOp, OwnerSecret,
};
use crate::node::NodeIdentity;
use crate::proto::{self, Tag, XlRegMsg};
use crate::regcred::{RegCred, MAX_REGCRED_LEN};
use crate::store::ClusterRef;

use super::{
    cluster_info, cluster_view, dial, name_cluster, read_or_closed, Client, ClientError,
    ClusterInfo, ClusterView, RegistryKeys,
};

/// The payload of the frame that asks a registry for its regCred.dat instead of a hello
/// (docs/protocol.md section 14.10).
pub const REGCRED_REQUEST: &[u8; 8] = b"XLRC\x00\x00\x00\x01";

/// Bit of `JoinToken.Usages`: the token admits new members.
pub const USAGE_JOIN: u32 = 1;
/// Bit of `JoinToken.Usages`: the token lets its holder list the cluster.
pub const USAGE_LIST: u32 = 2;

/// What a new join token allows, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTerms {
    /// Bits of [`USAGE_JOIN`] and [`USAGE_LIST`].
    pub usages: u32,
    /// Lifetime from the registry's now: `None` the registry's default (24 h),
    /// `Some(Duration::ZERO)` never expires.
    pub ttl: Option<Duration>,
    /// How many joins it admits: `None` unlimited.
    pub uses: Option<u32>,
}

impl Default for TokenTerms {
    /// A join token with the registry's default lifetime and no usage limit.
    fn default() -> TokenTerms {
        TokenTerms {
            usages: USAGE_JOIN,
            ttl: None,
            uses: None,
        }
    }
}

/// A join token as the registry lists it: never its secret (the registry has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The public token id.
    pub id: String,
    /// Bits of [`USAGE_JOIN`] and [`USAGE_LIST`].
    pub usages: u32,
    /// When it stops admitting (`None`: never).
    pub expires_at: Option<SystemTime>,
    /// When the owner minted it.
    pub created_at: SystemTime,
    /// Joins it still admits (`None`: unlimited).
    pub uses_left: Option<u32>,
    /// Revoked by the owner.
    pub revoked: bool,
}

/// Whether a token admits, and if not, why (the first reason that holds, in the order the
/// registry checks them: docs/protocol.md section 14.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// It admits (if it has the `join` usage).
    Valid,
    /// Revoked by the owner.
    Revoked,
    /// Past its expiry.
    Expired,
    /// No uses left.
    UsedUp,
}

impl TokenState {
    /// `valid`, `revoked`, `expired` or `used up`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::Revoked => "revoked",
            TokenState::Expired => "expired",
            TokenState::UsedUp => "used up",
        }
    }
}

impl TokenInfo {
    /// The token's state at `now`.
    pub fn state_at(&self, now: SystemTime) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if self.expires_at.is_some_and(|at| now >= at) {
            TokenState::Expired
        } else if self.uses_left == Some(0) {
            TokenState::UsedUp
        } else {
            TokenState::Valid
        }
    }
}

/// The owner credential of one cluster: the secret and the cluster's ID (every owner proof
/// covers the ID, so a request that names the cluster by name still needs it).
#[derive(Debug, Clone)]
pub struct ClusterOwner {
    /// The cluster's ID.
    pub cluster: Id,
    /// The owner credential.
    pub secret: OwnerSecret,
}

impl Client {
    /// Creates the cluster `name` with an owner (the verifier of `owner` goes to the
    /// registry, never the secret) and, if given, a first join token on `terms`. `open`
    /// makes a cluster that admits anyone but still has an owner. Creating a name this owner
    /// created before returns that cluster unchanged; anyone else's name is a Conflict.
    pub async fn create_owned(
        &mut self,
        name: &str,
        max_size: u32,
        endpoint_count: u32,
        owner: &OwnerSecret,
        open: bool,
        first_token: Option<(&JoinTokenSecret, &TokenTerms)>,
    ) -> Result<ClusterInfo, ClientError> {
        let key = owner.key();
        let owner_key = key.verifier();
        let tid = first_token.map_or("", |(token, _)| token.id());
        let input = owner_proof_input(
            &self.binding,
            OwnerOp::Create,
            name.as_bytes(),
            &owner_key,
            tid.as_bytes(),
        );
        let request = XlRegMsg {
            op: Some(Tag::Create as i32),
            cluster_name: Some(name.to_string()),
            cluster_max_size: Some(max_size),
            end_point_count: Some(endpoint_count),
            owner_key: Some(owner_key.to_vec()),
            owner_sig: Some(key.sign(&input).to_vec()),
            open: Some(open),
            new_token: first_token.map(|(token, terms)| new_token(token, terms)),
            ..XlRegMsg::default()
        };
        let reply = self
            .call(&request, Tag::CreateReply, Duration::ZERO)
            .await?;
        cluster_info(&reply)
    }

    /// Joins a cluster with a join token: `cluster` names it (as the registry resolves it),
    /// `cluster_id` is the ID the proof covers (a join string carries it), and `node` with
    /// `node_id` is the node this session registered (the proof covers its keys and
    /// endpoints as registered). A node that is already a member rejoins without the token
    /// mattering. Returns the cluster and the node's slot.
    pub async fn join_with_token(
        &mut self,
        cluster: &ClusterRef,
        cluster_id: &Id,
        token: &JoinTokenSecret,
        node: &NodeIdentity,
        node_id: &Id,
    ) -> Result<(ClusterInfo, u32), ClientError> {
        let comms = node.comms.public_key().to_spki_der();
        let sig = node.sig.public_key().to_spki_der();
        let input = join_proof_input(
            &self.binding,
            cluster_id.as_bytes(),
            token.id(),
            &JoiningNode {
                id: node_id.as_bytes(),
                comms_key: comms,
                sig_key: sig,
                endpoints: &node.endpoints,
            },
        );
        let mut request = XlRegMsg {
            op: Some(Tag::Join as i32),
            token_id: Some(token.id().to_string()),
            token_proof: Some(token.key().sign(&input).to_vec()),
            ..XlRegMsg::default()
        };
        name_cluster(&mut request, Some(cluster));
        let reply = self.call(&request, Tag::JoinReply, Duration::ZERO).await?;
        let slot = reply
            .slot
            .ok_or_else(|| ClientError::Protocol("JoinReply without Slot".into()))?;
        Ok((cluster_info(&reply)?, slot))
    }

    /// Lists a cluster as the holder of a token with the `list` usage (no node needed).
    /// `which` and `wait` as in [`Client::get_cluster`].
    pub async fn get_cluster_with_token(
        &mut self,
        cluster: &ClusterRef,
        cluster_id: &Id,
        token: &JoinTokenSecret,
        which: Option<u64>,
        wait: Duration,
    ) -> Result<ClusterView, ClientError> {
        let input = list_proof_input(&self.binding, cluster_id.as_bytes(), token.id());
        let mut request = get_request(which, wait);
        request.token_id = Some(token.id().to_string());
        request.token_proof = Some(token.key().sign(&input).to_vec());
        name_cluster(&mut request, Some(cluster));
        let reply = self.call(&request, Tag::ClusterMembers, wait).await?;
        cluster_view(&reply)
    }

    /// Lists a cluster as its owner (no node needed).
    pub async fn get_cluster_as_owner(
        &mut self,
        owner: &ClusterOwner,
        which: Option<u64>,
        wait: Duration,
    ) -> Result<ClusterView, ClientError> {
        let mut request = get_request(which, wait);
        self.sign_owner_request(&mut request, owner, OwnerOp::Get, b"", b"");
        let reply = self.call(&request, Tag::ClusterMembers, wait).await?;
        cluster_view(&reply)
    }

    /// Mints a join token on `terms`: the registry stores its verifier; the secret stays
    /// in `token`.
    pub async fn mint_token(
        &mut self,
        owner: &ClusterOwner,
        token: &JoinTokenSecret,
        terms: &TokenTerms,
    ) -> Result<TokenInfo, ClientError> {
        let new = new_token(token, terms);
        let verifier = new.verifier_key.clone().unwrap_or_default();
        let mut request = owner_request(Tag::MintToken);
        request.new_token = Some(new);
        self.sign_owner_request(
            &mut request,
            owner,
            OwnerOp::Mint,
            token.id().as_bytes(),
            &verifier,
        );
        let reply = self.call(&request, Tag::TokenList, Duration::ZERO).await?;
        one_token(&reply)
    }

    /// Lists the cluster's tokens (ids, usages, expiry, uses left: never secrets), in the
    /// order minted.
    pub async fn list_tokens(
        &mut self,
        owner: &ClusterOwner,
    ) -> Result<Vec<TokenInfo>, ClientError> {
        let mut request = owner_request(Tag::ListTokens);
        self.sign_owner_request(&mut request, owner, OwnerOp::ListTokens, b"", b"");
        let reply = self.call(&request, Tag::TokenList, Duration::ZERO).await?;
        reply.token_infos.iter().map(token_info).collect()
    }

    /// Revokes the token `tid`; revoking twice is no error.
    pub async fn revoke_token(
        &mut self,
        owner: &ClusterOwner,
        tid: &str,
    ) -> Result<TokenInfo, ClientError> {
        let mut request = owner_request(Tag::RevokeToken);
        request.token_id = Some(tid.to_string());
        self.sign_owner_request(&mut request, owner, OwnerOp::Revoke, tid.as_bytes(), b"");
        let reply = self.call(&request, Tag::TokenList, Duration::ZERO).await?;
        one_token(&reply)
    }

    /// Removes the member whose node ID is `member`; its slot becomes free.
    pub async fn evict(
        &mut self,
        owner: &ClusterOwner,
        member: &Id,
    ) -> Result<ClusterInfo, ClientError> {
        let mut request = owner_request(Tag::Evict);
        request.member_id = Some(member.as_bytes().to_vec());
        self.sign_owner_request(&mut request, owner, OwnerOp::Evict, member.as_bytes(), b"");
        let reply = self.call(&request, Tag::Done, Duration::ZERO).await?;
        cluster_info(&reply)
    }

    /// Closes the cluster to new members for good (members stay, and may rejoin).
    pub async fn close_cluster(
        &mut self,
        owner: &ClusterOwner,
    ) -> Result<ClusterInfo, ClientError> {
        let mut request = owner_request(Tag::CloseCluster);
        self.sign_owner_request(&mut request, owner, OwnerOp::Close, b"", b"");
        let reply = self.call(&request, Tag::Done, Duration::ZERO).await?;
        cluster_info(&reply)
    }

    /// Deletes the cluster, its members and its tokens; returns it as it was.
    pub async fn delete_cluster(
        &mut self,
        owner: &ClusterOwner,
    ) -> Result<ClusterInfo, ClientError> {
        let mut request = owner_request(Tag::DeleteCluster);
        self.sign_owner_request(&mut request, owner, OwnerOp::Delete, b"", b"");
        let reply = self.call(&request, Tag::Done, Duration::ZERO).await?;
        cluster_info(&reply)
    }

    /// The session's node leaves `cluster`; its slot becomes free and waiters see it gone.
    pub async fn leave(&mut self, cluster: &ClusterRef) -> Result<ClusterInfo, ClientError> {
        let mut request = owner_request(Tag::Leave);
        name_cluster(&mut request, Some(cluster));
        let reply = self.call(&request, Tag::Done, Duration::ZERO).await?;
        cluster_info(&reply)
    }

    /// Names the owner's cluster by ID in `request` and adds the owner proof of `op` over
    /// this session's binding.
    fn sign_owner_request(
        &self,
        request: &mut XlRegMsg,
        owner: &ClusterOwner,
        op: OwnerOp,
        a: &[u8],
        b: &[u8],
    ) {
        let id = owner.cluster.as_bytes();
        let input = owner_proof_input(&self.binding, op, id, a, b);
        request.cluster_id = Some(id.to_vec());
        request.owner_sig = Some(owner.secret.key().sign(&input).to_vec());
    }

    /// Dials the registry a join string names, trying its endpoints in order: fetches the
    /// registry's credentials from each ([`fetch_regcred`]), refuses any whose pin differs
    /// from the string's, and completes a handshake with the first that matches. Returns
    /// the session and the credentials (the endpoint dialled is the join string's, which
    /// may differ from the one inside the credentials).
    pub async fn dial_pinned(
        join: &JoinString,
        dial_timeout: Duration,
        timeout: Duration,
    ) -> Result<(Client, RegCred), ClientError> {
        let mut last = None;
        for endpoint in &join.endpoints {
            let regcred = match fetch_regcred(endpoint, dial_timeout, timeout).await {
                Ok(regcred) => regcred,
                Err(error) => {
                    last = Some(error);
                    continue;
                }
            };
            check_pin(&regcred, &join.pin, endpoint)?;
            let keys = RegistryKeys::of(&regcred);
            match Client::connect_keys(endpoint, keys, dial_timeout, timeout).await {
                Ok(client) => return Ok((client, regcred)),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or(ClientError::Protocol(
            "the join string names no endpoint".into(),
        )))
    }
}

/// The pin of `regcred` (docs/protocol.md section 14.10): SHA-256 over its registry ID and
/// its RSA comms and signing keys. Its handshake keys are covered by their signature, which
/// [`RegCred::parse`] checks.
pub fn pin_of(regcred: &RegCred) -> [u8; 32] {
    regcred_pin(
        regcred.id.as_bytes(),
        regcred.comms_key.to_spki_der(),
        regcred.sig_key.to_spki_der(),
    )
}

/// Refuses `regcred` unless its pin is `pin`.
pub fn check_pin(regcred: &RegCred, pin: &[u8; 32], endpoint: &str) -> Result<(), ClientError> {
    let found = pin_of(regcred);
    if &found == pin {
        Ok(())
    } else {
        Err(ClientError::PinMismatch {
            endpoint: endpoint.to_string(),
            expected: hex::encode(pin),
            found: hex::encode(found),
        })
    }
}

/// Asks the registry at `endpoint` for its regCred.dat, unauthenticated (docs/protocol.md
/// section 14.10), and parses it (checking its handshake keys' signature). The caller must
/// check it against a pin ([`check_pin`]) before trusting it.
pub async fn fetch_regcred(
    endpoint: &str,
    dial_timeout: Duration,
    timeout: Duration,
) -> Result<RegCred, ClientError> {
    // A registry at its connection limit closes a connection on arrival, so a close is
    // tried once more; a registry from before the fetch existed closes every one.
    let mut attempts = 0;
    let reply = loop {
        attempts += 1;
        let stream = dial(endpoint, dial_timeout).await?;
        let mut conn = Connection::new(stream, MAX_FRAME_LEN.min(MAX_REGCRED_LEN as usize));
        conn.write_frame(REGCRED_REQUEST, timeout).await?;
        match read_or_closed(&mut conn, timeout).await {
            Ok(reply) => {
                conn.shutdown().await;
                break reply;
            }
            Err(ClientError::Closed) if attempts < FETCH_ATTEMPTS => continue,
            Err(ClientError::Closed) => {
                return Err(ClientError::Protocol(format!(
                    "the registry at {endpoint} closed the connection instead of sending its \
                     credentials (a registry without the regCred fetch of docs/protocol.md \
                     section 14.10?): give its regCred.dat with --regcred"
                )))
            }
            Err(error) => return Err(error),
        }
    };
    let text = std::str::from_utf8(&reply)
        .map_err(|_| ClientError::Protocol("the registry's credentials are not UTF-8".into()))?;
    RegCred::parse(text)
        .map_err(|e| ClientError::Protocol(format!("the registry's credentials: {e}")))
}

/// How many regCred requests, each on its own connection, must be closed unanswered before
/// [`fetch_regcred`] gives up.
const FETCH_ATTEMPTS: u32 = 2;

/// A request with its op only.
fn owner_request(tag: Tag) -> XlRegMsg {
    XlRegMsg {
        op: Some(tag as i32),
        ..XlRegMsg::default()
    }
}

/// A GetCluster of `which` slots, held up to `wait`.
fn get_request(which: Option<u64>, wait: Duration) -> XlRegMsg {
    let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
    XlRegMsg {
        op: Some(Tag::GetCluster as i32),
        which,
        wait_ms: (wait_ms > 0).then_some(wait_ms),
        ..XlRegMsg::default()
    }
}

/// The JoinToken message that stores `token`'s verifier on `terms`.
fn new_token(token: &JoinTokenSecret, terms: &TokenTerms) -> proto::JoinToken {
    proto::JoinToken {
        id: Some(token.id().to_string()),
        verifier_key: Some(token.key().verifier().to_vec()),
        usages: Some(terms.usages),
        ttl_ms: terms
            .ttl
            .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        uses: terms.uses,
        ..proto::JoinToken::default()
    }
}

/// The one token a MintToken or RevokeToken reply carries.
fn one_token(reply: &XlRegMsg) -> Result<TokenInfo, ClientError> {
    match reply.token_infos.as_slice() {
        [token] => token_info(token),
        other => Err(ClientError::Protocol(format!(
            "TokenList with {} tokens where one was expected",
            other.len()
        ))),
    }
}

/// Reads a listed token.
fn token_info(token: &proto::JoinToken) -> Result<TokenInfo, ClientError> {
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    Ok(TokenInfo {
        id: token
            .id
            .clone()
            .ok_or_else(|| ClientError::Protocol("listed token without Id".into()))?,
        usages: token.usages.unwrap_or(USAGE_JOIN),
        expires_at: token.expires_at_ms.filter(|ms| *ms != 0).map(at),
        created_at: at(token.created_at_ms.unwrap_or(0)),
        uses_left: token.uses_left,
        revoked: token.revoked.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_terms_map_to_the_wire_as_the_spec_says() {
        let token = JoinTokenSecret::parse("k3x9p0.abcdefghijklmnopqrstuvwxyz").unwrap();
        let default = new_token(&token, &TokenTerms::default());
        assert_eq!(default.id.as_deref(), Some("k3x9p0"));
        assert_eq!(default.verifier_key, Some(token.key().verifier().to_vec()));
        assert_eq!(
            (default.usages, default.ttl_ms, default.uses),
            (Some(1), None, None)
        );
        let never = new_token(
            &token,
            &TokenTerms {
                usages: USAGE_JOIN | USAGE_LIST,
                ttl: Some(Duration::ZERO),
                uses: Some(5),
            },
        );
        assert_eq!(
            (never.usages, never.ttl_ms, never.uses),
            (Some(3), Some(0), Some(5))
        );
    }

    #[test]
    fn a_listed_token_says_why_it_does_not_admit() {
        let listed = token_info(&proto::JoinToken {
            id: Some("k3x9p0".into()),
            usages: Some(USAGE_JOIN),
            expires_at_ms: Some(2_000),
            created_at_ms: Some(1_000),
            uses_left: Some(2),
            ..proto::JoinToken::default()
        })
        .unwrap();
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(listed.created_at, at(1_000));
        assert_eq!(listed.state_at(at(1_999)), TokenState::Valid);
        assert_eq!(listed.state_at(at(2_000)), TokenState::Expired);
        let used_up = TokenInfo {
            uses_left: Some(0),
            ..listed.clone()
        };
        assert_eq!(used_up.state_at(at(1_500)), TokenState::UsedUp);
        let revoked = TokenInfo {
            revoked: true,
            ..listed
        };
        assert_eq!(revoked.state_at(at(1_500)).as_str(), "revoked");
        let never = token_info(&proto::JoinToken {
            id: Some("x".into()),
            expires_at_ms: Some(0),
            ..proto::JoinToken::default()
        })
        .unwrap();
        assert_eq!(never.expires_at, None);
        assert_eq!(never.uses_left, None);
        assert!(token_info(&proto::JoinToken::default()).is_err());
    }
}
