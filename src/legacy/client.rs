//! The xlReg 1.9 client library: talk to a registry's legacy endpoint (the Go registry
//! 1.9.x, or xlreg's `--legacy-listen`) as the Go client code does.
//!
//! `xlreg bench --legacy` uses it to drive both registries with one generator. A
//! [`LegacyClient`] is one lock-step session, shaped like the xlReg/2 [`crate::client::Client`]:
//! [`LegacyClient::connect`] sends the hello (RSA-OAEP-SHA-1 under the comms key of a
//! Go-format regCred.dat, proposing version 0 like the Go client) and reads the reply under
//! key1; then [`LegacyClient::register`], [`LegacyClient::create`], [`LegacyClient::join`],
//! [`LegacyClient::get_cluster`] and [`LegacyClient::bye`] each send one message under key2
//! and wait, with a timeout, for its reply. The bytes are those of [`crate::legacy::wire`].
//!
//! Two things differ from xlReg/2 and shape this module:
//! - the 1.9 wire has no framing, so replies are reassembled from whatever the socket
//!   delivers by the registry's own [`Assembler`] (the reply to the hello has a fixed length;
//!   a session message is complete when it decrypts to an XLRegMsg with a known Op);
//! - a 1.9 GetCluster cannot ask the registry to wait, and its reply does not carry the
//!   cluster's size: the client remembers the cluster from the JoinReply, and
//!   [`LegacyClient::wait_until_complete`] polls every [`POLL_INTERVAL`], as Go clients do.
//!
//! Errors are [`ClientError`]s, so callers handle both wires alike; an Error reply becomes
//! [`ClientError::Refused`] with `code: None` (1.9 has no error codes) and the ErrDesc.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::client::{check_reply, cluster_info, cluster_view, dial, name_cluster};
use crate::client::{ClientError, ClusterInfo, ClusterView};
use crate::connection::ConnectionError;
use crate::crypto::{AesKey, PublicKey};
use crate::frame::MAX_FRAME_LEN;
use crate::id::Id;
use crate::legacy::reader::Assembler;
use crate::legacy::wire::{self, Hello, Version, WireError, REPLY_LEN};
use crate::node::NodeIdentity;
use crate::proto::{Tag, XlRegMsg};
use crate::regcred::RegCred;
use crate::session_crypto::HandshakeError;
use crate::store::ClusterRef;
use crate::token;

/// How often [`LegacyClient::wait_until_complete`] asks for the cluster again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The version a Go client proposes in its hello (`SessionSetup(0)`); registries ignore it.
pub const PROPOSED_VERSION: Version = Version([0; 4]);

/// The attributes the Go client puts in its member token: ATTR_EPHEMERAL, set for members
/// without local storage.
pub const GO_MEMBER_ATTRS: u64 = 1;

/// Size of each read from the registry (the Go peers read 16 KiB at a time too).
const READ_CHUNK: usize = 16 * 1024;

/// One xlReg 1.9 session with a registry.
pub struct LegacyClient {
    stream: TcpStream,
    /// key2, the session key, for both directions.
    key: AesKey,
    inbox: Assembler,
    chunk: Box<[u8]>,
    timeout: Duration,
    registry_version: Version,
    /// The cluster this session joined: 1.9 ClusterMembers replies do not say its size.
    joined: Option<ClusterInfo>,
}

impl std::fmt::Debug for LegacyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session key stays out of debug output.
        f.debug_struct("LegacyClient")
            .field("registry_version", &self.registry_version)
            .field("joined", &self.joined)
            .finish_non_exhaustive()
    }
}

impl LegacyClient {
    /// Dials the legacy endpoint named in a Go-format `regcred` and completes the hello.
    /// `timeout` bounds the connect and every later wait for a reply.
    pub async fn connect(
        regcred: &RegCred,
        timeout: Duration,
    ) -> Result<LegacyClient, ClientError> {
        LegacyClient::connect_to(regcred.endpoint(), &regcred.comms_key, timeout).await
    }

    /// Dials `endpoint` and completes the hello under the registry's comms key `ck`.
    pub async fn connect_to(
        endpoint: &str,
        ck: &PublicKey,
        timeout: Duration,
    ) -> Result<LegacyClient, ClientError> {
        // Without Nagle's algorithm each message also leaves in one piece, as Go registries,
        // which take one read() as one message, need.
        let stream = dial(endpoint, timeout).await?;
        let hello = Hello::fresh(PROPOSED_VERSION);
        let mut client = LegacyClient {
            stream,
            key: hello.key.clone(),
            inbox: Assembler::new(MAX_FRAME_LEN),
            chunk: vec![0u8; READ_CHUNK].into_boxed_slice(),
            timeout,
            registry_version: PROPOSED_VERSION,
            joined: None,
        };
        client.write(&wire::seal_hello(ck, &hello)?).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let sealed = loop {
            if let Some(sealed) = client.inbox.take_exact(REPLY_LEN) {
                break sealed;
            }
            client.fill(deadline).await?;
        };
        // No MAC in 1.9: a reply that does not decrypt and unpad under key1 is the best sign
        // that the endpoint does not hold the comms key.
        let reply = wire::open_reply(&hello.key, &sealed).map_err(|error| match error {
            WireError::Crypto(_) => HandshakeError::ReplyUnauthentic,
            _ => HandshakeError::ReplyMalformed,
        })?;
        client.key = reply.key;
        client.registry_version = reply.version;
        Ok(client)
    }

    /// The version the registry announced in its reply to the hello.
    pub fn registry_version(&self) -> Version {
        self.registry_version
    }

    /// Registers `node` (Member) with a token signed the 1.9 way ([`token::sign_legacy`]),
    /// carrying `node.id` if it has one (Go clients send their own 20-byte ID: see
    /// [`Id::random_legacy`]) or none (the registry issues one). Returns the ID.
    pub async fn register(&mut self, node: &NodeIdentity) -> Result<Id, ClientError> {
        let token = token::sign_legacy(&node.token_fields(GO_MEMBER_ATTRS), &node.sig)?;
        let request = XlRegMsg {
            op: Some(Tag::Member as i32),
            member_specs: Some(token),
            ..XlRegMsg::default()
        };
        let reply = self.call(&request, Tag::MemberOk).await?;
        let id = reply
            .member_id
            .ok_or_else(|| ClientError::Protocol("MemberOK without MemberID".into()))?;
        Id::from_bytes(&id).map_err(|e| ClientError::Protocol(format!("MemberID: {e}")))
    }

    /// Creates the cluster `name` (or finds the existing one of that name).
    pub async fn create(
        &mut self,
        name: &str,
        max_size: u32,
        endpoint_count: u32,
    ) -> Result<ClusterInfo, ClientError> {
        let request = XlRegMsg {
            op: Some(Tag::Create as i32),
            cluster_name: Some(name.to_string()),
            cluster_max_size: Some(max_size),
            // The Go client sends the zero value too.
            cluster_attrs: Some(0),
            end_point_count: Some(endpoint_count),
            ..XlRegMsg::default()
        };
        let reply = self.call(&request, Tag::CreateReply).await?;
        let mut info = cluster_info(&reply)?;
        // A 1.9 CreateReply does not repeat the name.
        info.name = name.to_string();
        Ok(info)
    }

    /// Joins a cluster (`None`: the one this session created) and remembers it for
    /// [`LegacyClient::get_cluster`]. A 1.9 JoinReply carries no slot.
    pub async fn join(&mut self, cluster: Option<&ClusterRef>) -> Result<ClusterInfo, ClientError> {
        let mut request = XlRegMsg {
            op: Some(Tag::Join as i32),
            ..XlRegMsg::default()
        };
        name_cluster(&mut request, cluster);
        let reply = self.call(&request, Tag::JoinReply).await?;
        let mut info = cluster_info(&reply)?;
        if let Some(ClusterRef::Name(name)) = cluster {
            info.name = name.clone();
        }
        self.joined = Some(info.clone());
        Ok(info)
    }

    /// Lists the members of the cluster this session joined, once, without waiting:
    /// `which` selects slots (default all). The view's cluster is the one the JoinReply
    /// described, since a 1.9 ClusterMembers carries only the ID.
    pub async fn get_cluster(&mut self, which: Option<u64>) -> Result<ClusterView, ClientError> {
        let which = which.unwrap_or(u64::MAX);
        let request = XlRegMsg {
            op: Some(Tag::GetCluster as i32),
            cluster_id: self
                .joined
                .as_ref()
                .map(|cluster| cluster.id.as_bytes().to_vec()),
            which: Some(which),
            ..XlRegMsg::default()
        };
        let reply = self.call(&request, Tag::ClusterMembers).await?;
        let mut view = cluster_view(&reply)?;
        if let Some(joined) = &self.joined {
            if joined.id != view.cluster.id {
                return Err(ClientError::Protocol(format!(
                    "ClusterMembers for cluster {}, not the joined {}",
                    view.cluster.id, joined.id
                )));
            }
            view.cluster = joined.clone();
            if which == u64::MAX {
                view.cluster.size = view.members.len() as u32;
            }
        }
        Ok(view)
    }

    /// Polls [`LegacyClient::get_cluster`] every [`POLL_INTERVAL`] until every slot of the
    /// joined cluster is filled or `wait` has passed, and returns the last view (check
    /// [`ClusterView::is_complete`]).
    pub async fn wait_until_complete(
        &mut self,
        wait: Duration,
    ) -> Result<ClusterView, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let view = self.get_cluster(None).await?;
            if view.is_complete() || tokio::time::Instant::now() + POLL_INTERVAL > deadline {
                return Ok(view);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Ends the session politely: Bye, Ack, close.
    pub async fn bye(mut self) -> Result<(), ClientError> {
        let request = XlRegMsg {
            op: Some(Tag::Bye as i32),
            ..XlRegMsg::default()
        };
        self.call(&request, Tag::Ack).await?;
        // The registry closes after Ack; there is nothing useful to do if it already has.
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
        Ok(())
    }

    /// Sends one message and reads its reply, which must carry `expected` (or be an Error).
    async fn call(&mut self, request: &XlRegMsg, expected: Tag) -> Result<XlRegMsg, ClientError> {
        self.write(&wire::seal_message(&self.key, request)).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reply = loop {
            let taken = self
                .inbox
                .take_message(&self.key)
                .map_err(|e| ClientError::Protocol(format!("unreadable reply: {e}")))?;
            if let Some(reply) = taken {
                break reply;
            }
            self.fill(deadline).await?;
        };
        check_reply(reply, expected)
    }

    /// Writes one whole message in one write (the 1.9 wire's only framing).
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(bytes)).await {
            Err(_) => Err(ConnectionError::WriteTimeout(self.timeout).into()),
            Ok(Err(error)) => Err(closed_or(error)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Reads what the registry sent next into the inbox, by `deadline`.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), ClientError> {
        let read = tokio::time::timeout_at(deadline, self.stream.read(&mut self.chunk))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?;
        match read {
            Ok(0) if self.inbox.buffered() == 0 => Err(ClientError::Closed),
            Ok(0) => Err(ConnectionError::Truncated.into()),
            Ok(read) => {
                self.inbox.push(&self.chunk[..read]);
                Ok(())
            }
            Err(error) => Err(closed_or(error)),
        }
    }
}

/// A reset is the registry closing on us (as it does after refusing); anything else is a
/// failed connection.
fn closed_or(error: std::io::Error) -> ClientError {
    match error.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => ClientError::Closed,
        _ => ConnectionError::Io(error).into(),
    }
}
