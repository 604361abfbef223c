//! The xlReg/2 and xlReg/3 client library: talk to a registry from any Rust program.
//!
//! A [`Client`] is one session: [`Client::connect`] dials the registry named in a
//! `regCred.dat` and performs the handshake (which proves the registry holds the keys in the
//! file): xlReg/3 when the file carries handshake keys, and then never xlReg/2, so nobody
//! on the path can talk the client down; xlReg/2 otherwise. Then [`Client::register`], [`Client::create`], [`Client::join`],
//! [`Client::get_cluster`] and [`Client::bye`] each send one request and read its reply, in
//! lock-step. Errors say whether retrying may help ([`ClientError::is_retryable`]);
//! [`retry`] runs a whole session again with backoff until a deadline.
//!
//! Admission control (docs/protocol.md section 14) lives in the submodule `admission`:
//! [`Client::create_owned`], [`Client::join_with_token`], the owner's requests
//! ([`Client::mint_token`], [`Client::evict`], ...), [`Client::leave`], and
//! [`Client::dial_pinned`], which reaches a registry from a join string alone.
//!
//! A regCred.dat may list several endpoints (several servers on one etcd, docs/ha.md): the
//! client tries them in a shuffled order ([`EndpointOrder`]) and dials the next when one is
//! unreachable; a session cut short is run again from its start on the next endpoint.
//! Running a session again is safe only because every request the registry serves can be
//! repeated with the same effect: Member with an ID (the CLI always has one,
//! `NodeIdentity::claim_id`) recognises the node; Create of an existing name returns that
//! cluster; Join by a member returns its slot; GetCluster reads. Member *without* an ID is
//! the exception: each one that arrives issues a fresh ID, so repeating it after a lost reply
//! leaves an orphan node record (harmless, but give the node an ID first).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio::net::TcpStream;

use crate::connection::{Connection, ConnectionError};
use crate::crypto::{CryptoError, HandshakePublicKeys, PublicKey};
use crate::frame::MAX_FRAME_LEN;
use crate::id::Id;
use crate::node::NodeIdentity;
use crate::proto::{ErrCode, Tag, XlRegMsg, XlRegToken};
use crate::regcred::RegCred;
use crate::session_crypto::{
    ClientHandshake, ClientHandshakeV3, HandshakeError, Role, SessionCipher, WireCipher,
};
use crate::store::ClusterRef;
use crate::token;

mod admission;

pub use admission::{
    check_pin, fetch_regcred, pin_of, ClusterOwner, TokenInfo, TokenState, TokenTerms,
    REGCRED_REQUEST, USAGE_JOIN, USAGE_LIST,
};

/// How long the client waits for a reply beyond any wait it asked the registry for.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a probe connection waits to see whether the registry closes it on arrival (over
/// its connection limit, or stopping) or waits for a hello (it is serving: a hello it closed
/// unanswered was one it could not decrypt).
const PROBE_WAIT: Duration = Duration::from_millis(300);

/// What went wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the registry's endpoint (the connection was refused).
    #[error(
        "cannot connect to the registry at {endpoint}: connection refused: is `xlreg serve` \
         running at {endpoint}?"
    )]
    NothingListens {
        /// The endpoint dialled.
        endpoint: String,
    },
    /// The registry's endpoint could not be reached.
    #[error("cannot connect to the registry at {endpoint}: {source}")]
    Connect {
        /// The endpoint dialled.
        endpoint: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The registry did not answer in time.
    #[error("the registry did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed while talking.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The handshake failed: the endpoint is not the registry named in regCred.dat.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The registry closed the connection without answering (it drops sessions it cannot
    /// authenticate, and closes when shutting down).
    #[error("the registry closed the connection")]
    Closed,
    /// A registry that is serving closed our hello unanswered: it could not decrypt it, so
    /// it does not hold the key in this regCred.dat (the registry was rebuilt, or imported
    /// into a new data directory, since the file was written).
    #[error(
        "the registry at {endpoint} did not accept this regCred.dat's key: fetch the current one"
    )]
    KeyNotAccepted {
        /// The endpoint dialled.
        endpoint: String,
    },
    /// The registry refused the request.
    #[error("registry refused: {description}")]
    Refused {
        /// The error class, if the registry sent one (1.9 registries do not).
        code: Option<ErrCode>,
        /// The registry's description.
        description: String,
        /// The soonest a retry can succeed, if the registry said (a used-up quota).
        retry_after: Option<Duration>,
    },
    /// The registry's reply made no sense (wrong op, missing field, undecodable).
    #[error("unexpected reply from the registry: {0}")]
    Protocol(String),
    /// Signing the member token failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// xlReg/3 was asked for but the regCred.dat has no handshake keys (an xlReg/2-only
    /// file, or a registry from before xlReg/3): fetch the registry's current one.
    #[error("this regCred.dat has no xlReg/3 handshake keys; use protocol 2 or fetch the registry's current regCred.dat")]
    NoV3Keys,
    /// The credentials fetched from an endpoint are not the registry a join string pins:
    /// something else answers there (a wrong address, or an impostor).
    #[error(
        "the registry at {endpoint} is not the one this join string pins (pin {expected}, \
         found {found}): refusing to talk to it"
    )]
    PinMismatch {
        /// The endpoint dialled.
        endpoint: String,
        /// The pin the join string carries.
        expected: String,
        /// The pin of the credentials the endpoint sent.
        found: String,
    },
    /// Every endpoint of a regCred.dat that lists several failed, each in its own way.
    #[error("no endpoint of the registry answered: {}", describe_failures(.0))]
    NoEndpointAnswered(Vec<EndpointFailure>),
}

/// Why one endpoint of several could not be used.
#[derive(Debug)]
pub struct EndpointFailure {
    /// The endpoint dialled.
    pub endpoint: String,
    /// What went wrong there.
    pub error: ClientError,
}

fn describe_failures(failures: &[EndpointFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("{}: {}", f.endpoint, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClientError {
    /// True if running the session again later may succeed: the registry was unreachable,
    /// slow, restarting, or said it was unavailable. A refusal on the merits (full cluster,
    /// bad name, ...) is not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::NothingListens { .. }
            | ClientError::Timeout(_)
            | ClientError::Connection(_)
            | ClientError::Closed => true,
            ClientError::Refused { code, .. } => *code == Some(ErrCode::Unavailable),
            ClientError::KeyNotAccepted { .. }
            | ClientError::Handshake(_)
            | ClientError::Protocol(_)
            | ClientError::NoV3Keys
            | ClientError::PinMismatch { .. }
            | ClientError::Crypto(_) => false,
            ClientError::NoEndpointAnswered(failures) => {
                failures.iter().any(|f| f.error.is_retryable())
            }
        }
    }

    /// True if nothing listens at the registry's endpoint, or at any of them: no registry
    /// runs there at all (rather than one being slow or restarting).
    pub fn nothing_listens(&self) -> bool {
        match self {
            ClientError::NothingListens { .. } => true,
            ClientError::NoEndpointAnswered(failures) => {
                failures.iter().all(|f| f.error.nothing_listens())
            }
            _ => false,
        }
    }

    /// True if another endpoint of the same registry may succeed where this one failed:
    /// it was unreachable, slow, closed the connection or said it was unavailable. A
    /// refusal on the merits would be the same everywhere.
    fn is_failover(&self) -> bool {
        self.is_retryable()
    }
}

/// The order in which a client tries a registry's endpoints: shuffled once (so clients
/// spread over the servers), starting where the last good connection was made, and moving
/// past an endpoint that failed. Shared by the attempts of one retry loop.
#[derive(Debug)]
pub struct EndpointOrder {
    endpoints: Vec<String>,
    /// Index of the endpoint tried first.
    first: AtomicUsize,
}

impl EndpointOrder {
    /// `endpoints` in a random order.
    pub fn shuffled(endpoints: &[String]) -> EndpointOrder {
        use rand::seq::SliceRandom as _;
        let mut endpoints = endpoints.to_vec();
        endpoints.shuffle(&mut rand::rng());
        EndpointOrder::as_listed(&endpoints)
    }

    /// `endpoints` in the order given (tests, and tools that must pin one).
    pub fn as_listed(endpoints: &[String]) -> EndpointOrder {
        EndpointOrder {
            endpoints: endpoints.to_vec(),
            first: AtomicUsize::new(0),
        }
    }

    /// The endpoints in the order the next attempt tries them.
    pub fn next_attempt(&self) -> Vec<String> {
        let n = self.endpoints.len();
        let first = self.first.load(Ordering::Relaxed);
        (0..n)
            .map(|i| self.endpoints[(first + i) % n].clone())
            .collect()
    }

    /// `endpoint` answered: the next attempt starts there.
    fn answered(&self, endpoint: &str) {
        if let Some(i) = self.endpoints.iter().position(|e| e == endpoint) {
            self.first.store(i, Ordering::Relaxed);
        }
    }

    /// A session on `endpoint` was cut short: the next attempt starts at the endpoint after
    /// it.
    pub fn failed(&self, endpoint: &str) {
        if let Some(i) = self.endpoints.iter().position(|e| e == endpoint) {
            self.first
                .store((i + 1) % self.endpoints.len(), Ordering::Relaxed);
        }
    }
}

/// A cluster as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterInfo {
    /// Cluster ID.
    pub id: Id,
    /// Cluster name.
    pub name: String,
    /// Maximum number of members.
    pub max_size: u32,
    /// Endpoints each member registers.
    pub endpoint_count: u32,
    /// Attribute bits.
    pub attrs: u64,
    /// Members currently in the cluster.
    pub size: u32,
    /// Admits anyone (no join token needed): created `--open`, or by a client from before
    /// admission control (docs/protocol.md section 14).
    pub open: bool,
    /// Closed to new members by its owner.
    pub closed: bool,
}

/// One member of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's slot (join order).
    pub slot: u32,
    /// Member name.
    pub name: String,
    /// Node ID.
    pub id: Id,
    /// Attribute bits.
    pub attrs: u64,
    /// Comms key, DER SubjectPublicKeyInfo.
    pub comms_key: Vec<u8>,
    /// Sig key, DER SubjectPublicKeyInfo.
    pub sig_key: Vec<u8>,
    /// Endpoints, member-to-member first.
    pub endpoints: Vec<String>,
}

/// A cluster and the members a GetCluster returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster.
    pub cluster: ClusterInfo,
    /// Bitmap of the slots returned.
    pub which: u64,
    /// The members returned, in slot order.
    pub members: Vec<Member>,
}

impl ClusterView {
    /// True if every slot of the cluster is filled and was returned.
    pub fn is_complete(&self) -> bool {
        self.members.len() as u32 >= self.cluster.max_size
    }
}

/// The registry keys a handshake is made against: the protocol version to speak.
#[derive(Debug, Clone, Copy)]
pub enum RegistryKeys<'a> {
    /// xlReg/2: the RSA comms key.
    V2(&'a PublicKey),
    /// xlReg/3: the static X25519 and ML-KEM-768 keys.
    V3(&'a HandshakePublicKeys),
}

impl<'a> RegistryKeys<'a> {
    /// The keys of the highest version `regcred` supports: xlReg/3 if it carries handshake
    /// keys (its signature was checked when it was read), else xlReg/2.
    pub fn of(regcred: &'a RegCred) -> RegistryKeys<'a> {
        match &regcred.handshake {
            Some(handshake) => RegistryKeys::V3(&handshake.keys),
            None => RegistryKeys::V2(&regcred.comms_key),
        }
    }
}

/// One xlReg/2 or xlReg/3 session with a registry.
#[derive(Debug)]
pub struct Client {
    conn: Connection<TcpStream>,
    cipher: WireCipher,
    /// What member tokens are signed over: the registry's salt (xlReg/2) or the handshake
    /// hash (xlReg/3).
    binding: Vec<u8>,
    timeout: Duration,
    /// The endpoint this session was made with.
    endpoint: String,
}

impl Client {
    /// Dials the registry named in `regcred` and performs the handshake: xlReg/3 if the
    /// file has handshake keys (never falling back to xlReg/2), else xlReg/2. With several
    /// endpoints in the file, tries them in a shuffled order until one answers.
    pub async fn connect(regcred: &RegCred, timeout: Duration) -> Result<Client, ClientError> {
        let order = EndpointOrder::shuffled(&regcred.endpoints);
        Client::connect_any(&order, RegistryKeys::of(regcred), timeout, timeout).await
    }

    /// Tries the endpoints in `order` until a handshake succeeds, moving to the next when
    /// one is unreachable, slow or closes the connection ([`ClientError::is_retryable`]);
    /// any other failure (a key the registry does not accept, a bad reply) is returned at
    /// once. With one endpoint, its error is returned as it is; with several that all
    /// failed, [`ClientError::NoEndpointAnswered`] lists each one's.
    pub async fn connect_any(
        order: &EndpointOrder,
        keys: RegistryKeys<'_>,
        dial_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let mut failures = Vec::new();
        for endpoint in order.next_attempt() {
            match Client::connect_keys(&endpoint, keys, dial_timeout, timeout).await {
                Ok(client) => {
                    order.answered(&endpoint);
                    return Ok(client);
                }
                Err(error) if error.is_failover() => {
                    tracing::debug!(%endpoint, %error, "registry endpoint failed; trying the next");
                    failures.push(EndpointFailure { endpoint, error });
                }
                Err(error) => return Err(error),
            }
        }
        if failures.len() == 1 {
            return Err(failures.remove(0).error);
        }
        if failures.is_empty() {
            return Err(ClientError::Protocol(
                "regCred.dat lists no endpoint".to_string(),
            ));
        }
        Err(ClientError::NoEndpointAnswered(failures))
    }

    /// The endpoint this session was made with.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Dials the registry named in `regcred` and speaks protocol `version` (2 or 3).
    pub async fn connect_version(
        regcred: &RegCred,
        version: u32,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let keys = match (version, &regcred.handshake) {
            (3, Some(handshake)) => RegistryKeys::V3(&handshake.keys),
            (3, None) => return Err(ClientError::NoV3Keys),
            _ => RegistryKeys::V2(&regcred.comms_key),
        };
        let order = EndpointOrder::shuffled(&regcred.endpoints);
        Client::connect_any(&order, keys, timeout, timeout).await
    }

    /// Dials `endpoint` and performs the handshake against `registry_key`.
    pub async fn connect_to(
        endpoint: &str,
        registry_key: &PublicKey,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::connect_within(endpoint, registry_key, timeout, timeout).await
    }

    /// Like [`Client::connect_to`], giving up dialling after `dial_timeout`.
    pub async fn connect_within(
        endpoint: &str,
        registry_key: &PublicKey,
        dial_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::connect_keys(
            endpoint,
            RegistryKeys::V2(registry_key),
            dial_timeout,
            timeout,
        )
        .await
    }

    /// Dials `endpoint` (giving up after `dial_timeout`) and performs the handshake of the
    /// version `keys` belong to.
    pub async fn connect_keys(
        endpoint: &str,
        keys: RegistryKeys<'_>,
        dial_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        // A hello closed unanswered is tried once more on a fresh connection before the
        // probe judges it: a registry at a connection limit (its own, or one peer address's)
        // closes a connection on arrival, and a slot freed a moment later would make the
        // probe below take that for a refused key.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let stream = dial(endpoint, dial_timeout).await?;
            let mut conn = Connection::new(stream, MAX_FRAME_LEN);
            let (handshake, hello) = match keys {
                RegistryKeys::V2(key) => {
                    let (handshake, hello) = ClientHandshake::start(key)?;
                    (Pending::V2(handshake), hello)
                }
                RegistryKeys::V3(keys) => {
                    let (handshake, hello) = ClientHandshakeV3::start(keys, &mut rand::rng())?;
                    (Pending::V3(Box::new(handshake)), hello)
                }
            };
            conn.write_frame(&hello, timeout).await?;
            let reply = match read_or_closed(&mut conn, timeout).await {
                Err(ClientError::Closed) if attempts < HELLO_ATTEMPTS => continue,
                Err(ClientError::Closed) => return Err(hello_closed(endpoint, dial_timeout).await),
                other => other?,
            };
            let (cipher, binding) = match handshake {
                Pending::V2(handshake) => {
                    let keys = handshake.finish(&reply)?;
                    let cipher = WireCipher::V2(SessionCipher::new(&keys.key, Role::Client));
                    (cipher, keys.server_salt.to_vec())
                }
                Pending::V3(handshake) => {
                    let session = handshake.finish(&reply)?;
                    (
                        WireCipher::V3(session.cipher),
                        session.handshake_hash.to_vec(),
                    )
                }
            };
            return Ok(Client {
                conn,
                cipher,
                binding,
                timeout,
                endpoint: endpoint.to_string(),
            });
        }
    }

    /// Sends one request and reads its reply, which must carry `expected` (or be an Error).
    async fn call(
        &mut self,
        request: &XlRegMsg,
        expected: Tag,
        extra_wait: Duration,
    ) -> Result<XlRegMsg, ClientError> {
        let sealed = self.cipher.seal(&request.encode_to_vec());
        self.conn.write_frame(&sealed, self.timeout).await?;
        let sealed = read_or_closed(&mut self.conn, self.timeout + extra_wait).await?;
        let plaintext = self
            .cipher
            .open(&sealed)
            .map_err(|_| ClientError::Protocol("reply failed authentication".into()))?;
        let reply = XlRegMsg::decode(plaintext.as_slice())
            .map_err(|e| ClientError::Protocol(format!("undecodable reply: {e}")))?;
        check_reply(reply, expected)
    }

    /// Registers `node` (Member): returns the node's ID, issued now if it had none.
    pub async fn register(&mut self, node: &NodeIdentity) -> Result<Id, ClientError> {
        let token = signed_token(node, &self.binding)?;
        self.register_token(token).await
    }

    /// Registers with a ready-made token (it must be signed for this session: see
    /// [`Client::session_binding`]).
    pub async fn register_token(&mut self, token: XlRegToken) -> Result<Id, ClientError> {
        let request = XlRegMsg {
            op: Some(Tag::Member as i32),
            member_specs: Some(token),
            ..XlRegMsg::default()
        };
        let reply = self.call(&request, Tag::MemberOk, Duration::ZERO).await?;
        let id = reply
            .member_id
            .ok_or_else(|| ClientError::Protocol("MemberOK without MemberID".into()))?;
        Id::from_bytes(&id).map_err(|e| ClientError::Protocol(format!("MemberID: {e}")))
    }

    /// What member token signatures must cover in this session: the registry's salt
    /// (xlReg/2, 16 bytes) or the handshake hash (xlReg/3, 32 bytes).
    pub fn session_binding(&self) -> &[u8] {
        &self.binding
    }

    /// The protocol version of this session.
    pub fn version(&self) -> u32 {
        self.cipher.version()
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
            end_point_count: Some(endpoint_count),
            ..XlRegMsg::default()
        };
        let reply = self
            .call(&request, Tag::CreateReply, Duration::ZERO)
            .await?;
        cluster_info(&reply)
    }

    /// Joins a cluster (`None`: the one this session created). Returns it and our slot.
    pub async fn join(
        &mut self,
        cluster: Option<&ClusterRef>,
    ) -> Result<(ClusterInfo, u32), ClientError> {
        let mut request = XlRegMsg {
            op: Some(Tag::Join as i32),
            ..XlRegMsg::default()
        };
        name_cluster(&mut request, cluster);
        let reply = self.call(&request, Tag::JoinReply, Duration::ZERO).await?;
        let slot = reply
            .slot
            .ok_or_else(|| ClientError::Protocol("JoinReply without Slot".into()))?;
        Ok((cluster_info(&reply)?, slot))
    }

    /// Lists a cluster's members (`None`: the one this session joined). `which` selects
    /// slots (default all); with a non-zero `wait` the registry holds the reply until every
    /// selected slot is filled or the wait ends.
    pub async fn get_cluster(
        &mut self,
        cluster: Option<&ClusterRef>,
        which: Option<u64>,
        wait: Duration,
    ) -> Result<ClusterView, ClientError> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let mut request = XlRegMsg {
            op: Some(Tag::GetCluster as i32),
            which,
            wait_ms: (wait_ms > 0).then_some(wait_ms),
            ..XlRegMsg::default()
        };
        name_cluster(&mut request, cluster);
        let reply = self.call(&request, Tag::ClusterMembers, wait).await?;
        cluster_view(&reply)
    }

    /// Ends the session politely.
    pub async fn bye(mut self) -> Result<(), ClientError> {
        let request = XlRegMsg {
            op: Some(Tag::Bye as i32),
            ..XlRegMsg::default()
        };
        self.call(&request, Tag::Ack, Duration::ZERO).await?;
        self.conn.shutdown().await;
        Ok(())
    }
}

/// A handshake between its first message and the reply.
enum Pending {
    V2(ClientHandshake),
    V3(Box<ClientHandshakeV3>),
}

/// How many hellos, each on its own connection, must be closed unanswered before the
/// client asks why ([`hello_closed`]).
const HELLO_ATTEMPTS: u32 = 2;

/// Why the registry closed our hello unanswered. A registry closes a connection on arrival
/// when it is over its connection limit or stopping, and after reading the hello when it
/// cannot decrypt it. A probe connection that sends nothing tells the two apart: if the
/// registry keeps it open waiting for a hello, it is serving, so it refused our key.
async fn hello_closed(endpoint: &str, dial_timeout: Duration) -> ClientError {
    let Ok(stream) = dial(endpoint, dial_timeout).await else {
        return ClientError::Closed;
    };
    let mut probe = Connection::new(stream, MAX_FRAME_LEN);
    match probe.read_frame(PROBE_WAIT).await {
        Err(ConnectionError::ReadTimeout(_)) => ClientError::KeyNotAccepted {
            endpoint: endpoint.to_string(),
        },
        _ => ClientError::Closed,
    }
}

/// Connects to `endpoint` within `timeout`, with Nagle's algorithm off (every message is
/// written whole and waited for: delaying it only adds latency).
pub(crate) async fn dial(endpoint: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(endpoint))
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::ConnectionRefused => ClientError::NothingListens {
                endpoint: endpoint.to_string(),
            },
            _ => ClientError::Connect {
                endpoint: endpoint.to_string(),
                source,
            },
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `node`'s member token, signed for the session whose binding (salt or handshake hash) is
/// `binding`.
pub fn signed_token(node: &NodeIdentity, binding: &[u8]) -> Result<XlRegToken, CryptoError> {
    token::sign_v2(&node.token_fields(0), &node.sig, binding)
}

async fn read_or_closed(
    conn: &mut Connection<TcpStream>,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    match conn.read_frame(timeout).await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(ClientError::Closed),
        Err(ConnectionError::ReadTimeout(t)) => Err(ClientError::Timeout(t)),
        Err(ConnectionError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Err(ClientError::Closed)
        }
        Err(e) => Err(e.into()),
    }
}

/// Names `cluster` in `request` by ID or name (`None`: leave it to the session's default).
pub(crate) fn name_cluster(request: &mut XlRegMsg, cluster: Option<&ClusterRef>) {
    match cluster {
        Some(ClusterRef::Id(id)) => request.cluster_id = Some(id.as_bytes().to_vec()),
        Some(ClusterRef::Name(name)) => request.cluster_name = Some(name.clone()),
        None => {}
    }
}

/// Turns an Error reply into [`ClientError::Refused`] and checks the op of any other.
pub fn check_reply(reply: XlRegMsg, expected: Tag) -> Result<XlRegMsg, ClientError> {
    match reply.op.map(Tag::try_from) {
        Some(Ok(Tag::Error)) => Err(ClientError::Refused {
            code: reply.err_kind.and_then(|k| ErrCode::try_from(k).ok()),
            description: reply.err_desc.unwrap_or_default(),
            retry_after: reply
                .retry_after_ms
                .map(|ms| Duration::from_millis(ms.into())),
        }),
        Some(Ok(tag)) if tag == expected => Ok(reply),
        other => Err(ClientError::Protocol(format!(
            "expected {}, got op {other:?}",
            expected.as_str_name()
        ))),
    }
}

/// Reads the cluster fields of a CreateReply, JoinReply or ClusterMembers.
pub fn cluster_info(reply: &XlRegMsg) -> Result<ClusterInfo, ClientError> {
    let id = reply
        .cluster_id
        .as_deref()
        .ok_or_else(|| ClientError::Protocol("reply without ClusterID".into()))?;
    Ok(ClusterInfo {
        id: Id::from_bytes(id).map_err(|e| ClientError::Protocol(format!("ClusterID: {e}")))?,
        name: reply.cluster_name.clone().unwrap_or_default(),
        max_size: reply.cluster_max_size.unwrap_or(0),
        endpoint_count: reply.end_point_count.unwrap_or(0),
        attrs: reply.cluster_attrs.unwrap_or(0),
        size: reply.cluster_size.unwrap_or(0),
        open: reply.open.unwrap_or(true),
        closed: reply.closed.unwrap_or(false),
    })
}

/// Reads a ClusterMembers reply; the n-th token belongs to the n-th set bit of `Which`.
pub fn cluster_view(reply: &XlRegMsg) -> Result<ClusterView, ClientError> {
    let cluster = cluster_info(reply)?;
    let which = reply.which.unwrap_or(0);
    let slots = (0u32..64).filter(|slot| which & (1u64 << slot) != 0);
    if which.count_ones() as usize != reply.tokens.len() {
        return Err(ClientError::Protocol(format!(
            "Which has {} bits but {} tokens came",
            which.count_ones(),
            reply.tokens.len()
        )));
    }
    let mut members = Vec::with_capacity(reply.tokens.len());
    for (slot, token) in slots.zip(&reply.tokens) {
        let id = token
            .id
            .as_deref()
            .ok_or_else(|| ClientError::Protocol("member token without ID".into()))?;
        members.push(Member {
            slot,
            name: token.name.clone().unwrap_or_default(),
            id: Id::from_bytes(id).map_err(|e| ClientError::Protocol(format!("member ID: {e}")))?,
            attrs: token.attrs.unwrap_or(0),
            comms_key: token.comms_key.clone().unwrap_or_default(),
            sig_key: token.sig_key.clone().unwrap_or_default(),
            endpoints: token.my_ends.clone(),
        });
    }
    Ok(ClusterView {
        cluster,
        which,
        members,
    })
}

/// Runs `attempt` until it succeeds, fails for good, or `deadline` passes, sleeping with
/// exponential backoff (100 ms doubling to 2 s) between retryable failures. `on_retry` hears
/// about each failure that will be retried.
pub async fn retry<T, F, Fut>(
    deadline: tokio::time::Instant,
    on_retry: impl FnMut(&ClientError, Duration),
    attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    retry_if(deadline, ClientError::is_retryable, on_retry, attempt).await
}

/// [`retry`], retrying only the failures `retryable` accepts (a subset of the retryable
/// ones: an interactive command, say, gives up at once when nothing listens).
pub async fn retry_if<T, F, Fut>(
    deadline: tokio::time::Instant,
    retryable: impl Fn(&ClientError) -> bool,
    mut on_retry: impl FnMut(&ClientError, Duration),
    mut attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && retryable(&error) => {
                // A registry that says when a retry can succeed (a used-up quota) is taken
                // at its word: no retry before then, and none at all past the deadline.
                let wait = match &error {
                    ClientError::Refused {
                        retry_after: Some(after),
                        ..
                    } => backoff.max(*after),
                    _ => backoff,
                };
                let now = tokio::time::Instant::now();
                if now + wait >= deadline {
                    return Err(error);
                }
                on_retry(&error, wait);
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}
