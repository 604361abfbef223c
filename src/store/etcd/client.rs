//! The etcd client the etcd backend (and the high-availability code beside it) speaks
//! through: one gRPC channel per configured endpoint, a timeout on every request, failover
//! across the endpoints, retries only where a retry cannot apply a change twice, and the
//! `xlreg_etcd_*` counters.
//!
//! This module owns [`EtcdConfig`] (how to reach etcd), [`EtcdClient`] and [`EtcdError`].
//! The stubs come from etcd's own .proto files, compiled by build.rs ([`super::pb`]); no
//! other etcd client library is involved (docs/dependencies.md says why).
//!
//! What is retried:
//! - Reads ([`EtcdClient::get`], [`EtcdClient::get_prefix`], [`EtcdClient::read`]) and
//!   other requests that change nothing, or change it the same way however often they run
//!   ([`EtcdClient::put`] of a fixed value, lease grants and keep-alives), are tried on
//!   the next endpoint when one does not answer within the request timeout, refuses the
//!   connection, or says it has no leader, until every endpoint was tried twice.
//! - A transaction that changes something ([`EtcdClient::txn`]) is sent once: if it fails
//!   in a way that leaves open whether etcd applied it (a timeout, a lost connection, a
//!   leader change), the answer is [`EtcdError::Ambiguous`], and the caller decides (the
//!   store resolves it through the transaction's operation key; see `store/etcd/mod.rs`).
//!
//! Reads are linearizable (etcd's default): a read sees every change etcd acknowledged
//! before it began, through whichever member it asks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use super::pb::etcdserverpb::{
    auth_client::AuthClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, response_op, AuthenticateRequest, Compare,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use super::pb::mvccpb::KeyValue;

/// The default time one etcd request may take before the next endpoint is tried.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How many keys one page of a prefix read holds.
const PAGE: i64 = 512;

/// How to reach an etcd cluster: `serve --etcd`, `--etcd-prefix` and the TLS and
/// authentication flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// The client URLs of the etcd members (`http://127.0.0.1:2379`; `https://` with TLS).
    /// A bare `host:port` is taken as `http://host:port` (`https://` when TLS is set).
    pub endpoints: Vec<String>,
    /// The key prefix every record of this registry lives under, e.g. `/xlreg`.
    pub prefix: String,
    /// TLS towards etcd, if any.
    pub tls: Option<EtcdTls>,
    /// etcd user name and the file holding its password, if etcd has authentication on.
    pub user: Option<EtcdUser>,
    /// How long one request may take before it counts as failed.
    pub request_timeout: Duration,
}

/// TLS settings towards etcd (`--etcd-cacert`, `--etcd-cert`, `--etcd-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate (PEM) that signed the etcd members' certificates; without it the
    /// system's roots are not consulted, so give it.
    pub ca: Option<PathBuf>,
    /// The client certificate (PEM) and its key (PEM), for etcd's client-cert auth.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// etcd authentication (`--etcd-user`, `--etcd-password-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUser {
    /// The etcd user.
    pub name: String,
    /// A file holding the password (trailing newline ignored); never logged.
    pub password_file: PathBuf,
}

impl EtcdConfig {
    /// A configuration for `endpoints` under `prefix`, without TLS or authentication.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            tls: None,
            user: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The configuration cannot be used (no endpoint, a bad URL, an unreadable TLS or
    /// password file).
    #[error("etcd configuration: {0}")]
    Config(String),
    /// No endpoint answered in time (every member down, cut off, or without a quorum):
    /// temporary, nothing was changed by this request.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// A change was sent and may or may not have been applied (the request timed out, the
    /// connection was lost, or the leader changed before the answer came).
    #[error("etcd transaction outcome unknown: {0}")]
    Ambiguous(String),
    /// The revision asked for has been compacted away.
    #[error("etcd revision {0} has been compacted")]
    Compacted(i64),
    /// etcd refused the request (permission denied, a bad request, an unknown lease...).
    #[error("etcd refused the request: {code:?}: {message}")]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// etcd's message.
        message: String,
    },
}

/// Process-wide counters of etcd traffic, rendered as `xlreg_etcd_*` by `crate::metrics`.
#[derive(Debug, Default)]
pub struct EtcdCounters {
    /// Requests sent to an etcd member (each try counts).
    pub round_trips: AtomicU64,
    /// Requests sent again to another endpoint after a failure, and transactions rerun
    /// after a lost compare.
    pub retries: AtomicU64,
    /// Transactions whose compares failed because another writer got there first.
    pub lost_compares: AtomicU64,
    /// Transactions whose outcome was unknown and was resolved through the operation key.
    pub ambiguous: AtomicU64,
}

/// The counters of every etcd client in this process.
pub fn counters() -> &'static EtcdCounters {
    static COUNTERS: std::sync::OnceLock<EtcdCounters> = std::sync::OnceLock::new();
    COUNTERS.get_or_init(EtcdCounters::default)
}

/// Faults a test injects into a real client talking to a real etcd (never set otherwise).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// This many coming transactions are applied by etcd, but their answer is dropped and
    /// reported as [`EtcdError::Ambiguous`] (a connection lost after sending).
    pub(crate) lose_answer: AtomicU64,
    /// This many coming transactions are not sent at all, and reported as
    /// [`EtcdError::Ambiguous`] (a connection lost before sending).
    pub(crate) lose_request: AtomicU64,
}

/// A handle on an etcd cluster. Cloning is cheap; clones share the connections.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<(String, Channel)>,
    /// The endpoint that answered last: tried first.
    current: AtomicUsize,
    timeout: Duration,
    user: Option<(String, String)>,
    /// The auth token, once authenticated.
    token: Mutex<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>>,
    faults: Faults,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self
            .inner
            .endpoints
            .iter()
            .map(|(u, _)| u.as_str())
            .collect();
        f.debug_struct("EtcdClient")
            .field("endpoints", &urls)
            .finish_non_exhaustive()
    }
}

/// Whether a failed request may be sent again (to another endpoint) without risk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// It changes nothing, or the same thing however often it runs.
    Safe,
    /// As `Safe`, but each endpoint is asked once only (a probe: answer fast).
    OncePerEndpoint,
    /// It may apply a change: report an unknown outcome instead.
    Never,
}

impl EtcdClient {
    /// Connects (lazily: nothing is dialled before the first request) to the endpoints of
    /// `config`. Call within a tokio runtime: the connections' tasks run on it.
    pub fn connect(config: &EtcdConfig) -> Result<EtcdClient, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoint given".into()));
        }
        let tls = match &config.tls {
            Some(tls) => Some(tls_config(tls)?),
            None => None,
        };
        let mut endpoints = Vec::new();
        for raw in &config.endpoints {
            let url = if raw.contains("://") {
                raw.clone()
            } else if tls.is_some() {
                format!("https://{raw}")
            } else {
                format!("http://{raw}")
            };
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| EtcdError::Config(format!("etcd endpoint {raw:?}: {e}")))?
                .connect_timeout(config.request_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(config.request_timeout)
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| EtcdError::Config(format!("etcd TLS for {raw:?}: {e}")))?;
            }
            endpoints.push((url, endpoint.connect_lazy()));
        }
        let user = match &config.user {
            Some(user) => {
                let password = std::fs::read_to_string(&user.password_file).map_err(|e| {
                    EtcdError::Config(format!(
                        "etcd password file {}: {e}",
                        user.password_file.display()
                    ))
                })?;
                let password = password.trim_end_matches(['\r', '\n']).to_string();
                Some((user.name.clone(), password))
            }
            None => None,
        };
        Ok(EtcdClient {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                timeout: config.request_timeout,
                user,
                token: Mutex::new(None),
                faults: Faults::default(),
            }),
        })
    }

    /// The faults a test injects.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Sends one request with `call`, trying the endpoints in turn from the one that
    /// answered last, each within the request timeout.
    async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        retry: Retry,
        call: F,
    ) -> Result<T, EtcdError>
    where
        F: Fn(Channel, Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.inner.endpoints.len();
        let tries = match retry {
            Retry::Safe => 2 * n,
            Retry::OncePerEndpoint => n,
            Retry::Never => 1,
        };
        let start = self.inner.current.load(Ordering::Relaxed);
        let mut last = String::new();
        let mut reauthenticated = false;
        let mut i = 0;
        while i < tries {
            let index = (start + i) % n;
            let (url, channel) = &self.inner.endpoints[index];
            if i > 0 {
                counters().retries.fetch_add(1, Ordering::Relaxed);
            }
            counters().round_trips.fetch_add(1, Ordering::Relaxed);
            let token = self.token(channel.clone()).await?;
            let answer =
                tokio::time::timeout(self.inner.timeout, call(channel.clone(), token)).await;
            let status = match answer {
                Ok(Ok(response)) => {
                    self.inner.current.store(index, Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    self.inner.timeout.as_millis()
                )),
            };
            match classify(&status) {
                Failure::Transient => {
                    last = format!("{what} at {url}: {}", describe(&status));
                    tracing::debug!(endpoint = %url, what, error = %last, "etcd request failed");
                    // The next request starts at the next endpoint.
                    self.inner.current.store((index + 1) % n, Ordering::Relaxed);
                    if retry == Retry::Never {
                        return Err(EtcdError::Ambiguous(last));
                    }
                    if i + 1 < tries {
                        // Let an election or a restart get on before the next member.
                        tokio::time::sleep(Duration::from_millis(25 * (i as u64 + 1))).await;
                    }
                }
                Failure::TokenExpired if self.inner.user.is_some() && !reauthenticated => {
                    reauthenticated = true;
                    *self.token_slot() = None;
                    // Nothing was applied: a refused token is checked before anything.
                    continue;
                }
                Failure::Compacted => {
                    return Err(EtcdError::Compacted(compacted_revision(&status)));
                }
                Failure::Refused | Failure::TokenExpired => {
                    return Err(EtcdError::Refused {
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
            }
            i += 1;
        }
        Err(EtcdError::Unavailable(last))
    }

    fn token_slot(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>>
    {
        // Only assignments happen under this lock.
        self.inner.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The auth token to send, authenticating first if etcd wants one and none is held.
    async fn token(
        &self,
        channel: Channel,
    ) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, EtcdError> {
        let Some((name, password)) = &self.inner.user else {
            return Ok(None);
        };
        if let Some(token) = self.token_slot().clone() {
            return Ok(Some(token));
        }
        counters().round_trips.fetch_add(1, Ordering::Relaxed);
        let request = AuthenticateRequest {
            name: name.clone(),
            password: password.clone(),
        };
        let answer = tokio::time::timeout(
            self.inner.timeout,
            AuthClient::new(channel).authenticate(request),
        )
        .await
        .map_err(|_| EtcdError::Unavailable("etcd authentication timed out".into()))?
        .map_err(|status| match classify(&status) {
            Failure::Transient => {
                EtcdError::Unavailable(format!("etcd authentication: {}", describe(&status)))
            }
            _ => EtcdError::Refused {
                code: status.code(),
                message: status.message().to_string(),
            },
        })?;
        let token = answer
            .into_inner()
            .token
            .parse()
            .map_err(|_| EtcdError::Refused {
                code: Code::Unauthenticated,
                message: "etcd sent an auth token that is not ASCII".into(),
            })?;
        *self.token_slot() = Some(token);
        Ok(self.token_slot().clone())
    }

    /// The value of `key` (linearizable).
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let answer = self
            .range(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(answer.kvs.into_iter().next())
    }

    /// Whether a quorum answers now: a linearizable read of `key`, each endpoint asked once.
    pub async fn probe(&self, key: &[u8]) -> Result<(), EtcdError> {
        let request = RangeRequest {
            key: key.to_vec(),
            count_only: true,
            ..Default::default()
        };
        self.call("probe", Retry::OncePerEndpoint, |channel, token| {
            let request = with_token(request.clone(), token);
            async move { KvClient::new(channel).range(request).await }
        })
        .await
        .map(drop)
    }

    /// One range request as given (linearizable unless it says otherwise), retried.
    pub async fn range(
        &self,
        request: RangeRequest,
    ) -> Result<super::pb::etcdserverpb::RangeResponse, EtcdError> {
        self.call("range", Retry::Safe, |channel, token| {
            let request = with_token(request.clone(), token);
            async move { KvClient::new(channel).range(request).await }
        })
        .await
    }

    /// Every key-value under `prefix` at `revision` (0: now), in key order, read in pages;
    /// returns them with the revision they were read at.
    pub async fn get_prefix(
        &self,
        prefix: &[u8],
        revision: i64,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut at = revision;
        let mut all = Vec::new();
        loop {
            let page = self.page(&from, &end, at, PAGE).await?;
            if at == 0 {
                at = page.1;
            }
            let more = page.2;
            if let Some(last) = page.0.last() {
                from = next_key(&last.key);
            }
            all.extend(page.0);
            if !more {
                return Ok((all, at));
            }
        }
    }

    /// One page of `[from, end)` at `revision` (0: now): the key-values, the revision read
    /// at, and whether more follow.
    pub async fn page(
        &self,
        from: &[u8],
        end: &[u8],
        revision: i64,
        limit: i64,
    ) -> Result<(Vec<KeyValue>, i64, bool), EtcdError> {
        let answer = self
            .range(RangeRequest {
                key: from.to_vec(),
                range_end: end.to_vec(),
                revision,
                limit,
                ..Default::default()
            })
            .await?;
        let at = answer.header.map_or(revision, |h| h.revision);
        let at = if revision > 0 { revision } else { at };
        Ok((answer.kvs, at, answer.more))
    }

    /// How many keys lie under `prefix` now, and the revision counted at.
    pub async fn count_prefix(&self, prefix: &[u8]) -> Result<(u64, i64), EtcdError> {
        let answer = self
            .range(RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                count_only: true,
                ..Default::default()
            })
            .await?;
        let revision = answer.header.map_or(0, |h| h.revision);
        Ok((u64::try_from(answer.count).unwrap_or(0), revision))
    }

    /// Reads several keys in one round trip, at one revision (a read-only transaction):
    /// the value of each (in order) and that revision. Retried (it changes nothing).
    pub async fn read(
        &self,
        keys: &[Vec<u8>],
        revision: i64,
    ) -> Result<(Vec<Option<KeyValue>>, i64), EtcdError> {
        let success = keys
            .iter()
            .map(|key| range_op(key.clone(), revision))
            .collect();
        let request = TxnRequest {
            compare: Vec::new(),
            success,
            failure: Vec::new(),
        };
        let answer = self
            .call("read", Retry::Safe, |channel, token| {
                let request = with_token(request.clone(), token);
                async move { KvClient::new(channel).txn(request).await }
            })
            .await?;
        let at = answer.header.map_or(0, |h| h.revision);
        Ok((range_values(answer.responses), at))
    }

    /// Sends a transaction that may change something, once: an unknown outcome is
    /// [`EtcdError::Ambiguous`] (see the module doc).
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        if take_one(&self.inner.faults.lose_request) {
            return Err(EtcdError::Ambiguous(
                "connection lost before sending (test fault)".into(),
            ));
        }
        let answer = self
            .call("txn", Retry::Never, |channel, token| {
                let request = with_token(request.clone(), token);
                async move { KvClient::new(channel).txn(request).await }
            })
            .await?;
        if take_one(&self.inner.faults.lose_answer) {
            return Err(EtcdError::Ambiguous(
                "connection lost after sending (test fault)".into(),
            ));
        }
        Ok(answer)
    }

    /// Sends a transaction that is safe to repeat (its compares make a second run a no-op,
    /// or it changes nothing), retried across endpoints.
    pub async fn txn_idempotent(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.call("txn", Retry::Safe, |channel, token| {
            let request = with_token(request.clone(), token);
            async move { KvClient::new(channel).txn(request).await }
        })
        .await
    }

    /// Puts `value` under `key` (with `lease`, 0 for none). Retried: putting the same value
    /// twice is putting it once.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        };
        let answer = self
            .call("put", Retry::Safe, |channel, token| {
                let request = with_token(request.clone(), token);
                async move { KvClient::new(channel).put(request).await }
            })
            .await?;
        Ok(answer.header.map_or(0, |h| h.revision))
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let request = LeaseGrantRequest {
            ttl: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1),
            id: 0,
        };
        let answer = self
            .call("lease grant", Retry::Safe, |channel, token| {
                let request = with_token(request, token);
                async move { LeaseClient::new(channel).lease_grant(request).await }
            })
            .await?;
        if !answer.error.is_empty() {
            return Err(EtcdError::Refused {
                code: Code::Unknown,
                message: answer.error,
            });
        }
        Ok(answer.id)
    }

    /// Renews lease `id` once; returns the seconds it now has left (0: it had expired or
    /// does not exist).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let answer = self
            .call(
                "lease keep-alive",
                Retry::Safe,
                |channel, token| async move {
                    let request = tokio_stream::iter([LeaseKeepAliveRequest { id }]);
                    let mut request = tonic::Request::new(request);
                    if let Some(token) = token {
                        request.metadata_mut().insert("token", token);
                    }
                    let mut stream = LeaseClient::new(channel)
                        .lease_keep_alive(request)
                        .await?
                        .into_inner();
                    match stream.message().await? {
                        Some(answer) => Ok(tonic::Response::new(answer)),
                        None => Err(Status::unavailable("keep-alive stream closed")),
                    }
                },
            )
            .await?;
        Ok(answer.ttl)
    }

    /// Revokes lease `id` (its keys are deleted). Revoking an unknown lease is no error.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let request = LeaseRevokeRequest { id };
        match self
            .call("lease revoke", Retry::Safe, |channel, token| {
                let request = with_token(request, token);
                async move { LeaseClient::new(channel).lease_revoke(request).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(EtcdError::Refused {
                code: Code::NotFound,
                ..
            }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// The status of the member that answers (its database size, leader, raft index).
    pub async fn status(&self) -> Result<StatusResponse, EtcdError> {
        self.call("status", Retry::Safe, |channel, token| {
            let request = with_token(StatusRequest {}, token);
            async move { MaintenanceClient::new(channel).status(request).await }
        })
        .await
    }

    /// A channel to the endpoint tried first now, and its index (for streams: the watcher
    /// moves to the next one with [`EtcdClient::skip_endpoint`] when a stream fails).
    pub(crate) fn channel(&self) -> (usize, Channel) {
        let n = self.inner.endpoints.len();
        let index = self.inner.current.load(Ordering::Relaxed) % n;
        (index, self.inner.endpoints[index].1.clone())
    }

    /// Moves past endpoint `index` (it failed a stream).
    pub(crate) fn skip_endpoint(&self, index: usize) {
        let n = self.inner.endpoints.len();
        let _ = self.inner.current.compare_exchange(
            index,
            (index + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The auth token for a stream opened by hand (authenticating first if needed).
    pub(crate) async fn stream_token(
        &self,
        channel: Channel,
    ) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, EtcdError> {
        self.token(channel).await
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}

/// Wraps `message` in a request carrying the auth token, if any.
fn with_token<M>(
    message: M,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("token", token);
    }
    request
}

fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// How a failed request failed.
enum Failure {
    /// The member did not answer, or cannot serve now (no leader, shutting down): another
    /// member, or a later try, may do better.
    Transient,
    /// The revision asked for was compacted.
    Compacted,
    /// The auth token expired or is invalid.
    TokenExpired,
    /// etcd refused it for good.
    Refused,
}

fn classify(status: &Status) -> Failure {
    let message = status.message();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            Failure::Transient
        }
        Code::Unknown | Code::Internal
            if message.contains("leader")
                || message.contains("timed out")
                || message.contains("transport")
                || message.contains("connection")
                || message.contains("h2") =>
        {
            Failure::Transient
        }
        Code::OutOfRange if message.contains("compacted") => Failure::Compacted,
        Code::Unauthenticated | Code::InvalidArgument if message.contains("token") => {
            Failure::TokenExpired
        }
        _ => Failure::Refused,
    }
}

/// A status and its sources in one line (tonic puts "tcp connect error" in the source).
fn describe(status: &Status) -> String {
    use std::error::Error as _;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn compacted_revision(status: &Status) -> i64 {
    // "etcdserver: mvcc: required revision has been compacted": etcd does not say which.
    let _ = status;
    0
}

fn tls_config(tls: &EtcdTls) -> Result<ClientTlsConfig, EtcdError> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path)
            .map_err(|e| EtcdError::Config(format!("etcd {what} {}: {e}", path.display())))
    };
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &tls.ca {
        config = config.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
    }
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(
            read(cert, "client certificate")?,
            read(key, "client key")?,
        ));
    }
    Ok(config)
}

/// The end of the range of every key starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the key space.
    vec![0]
}

/// The smallest key after `key`.
fn next_key(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// A transaction operation reading `key` at `revision` (0: the transaction's own).
pub fn range_op(key: Vec<u8>, revision: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key,
            revision,
            ..Default::default()
        })),
    }
}

/// A transaction operation putting `value` under `key` (with `lease`, 0 for none).
pub fn put_op(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// A transaction operation deleting `key`.
pub fn delete_op(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            super::pb::etcdserverpb::DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

/// A compare: `key`'s `target` revision stands in `result` to `revision`.
pub fn compare_revision(
    key: Vec<u8>,
    range_end: Vec<u8>,
    target: compare::CompareTarget,
    result: compare::CompareResult,
    revision: i64,
) -> Compare {
    let union = match target {
        compare::CompareTarget::Create => compare::TargetUnion::CreateRevision(revision),
        compare::CompareTarget::Mod => compare::TargetUnion::ModRevision(revision),
        _ => compare::TargetUnion::Version(revision),
    };
    Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end,
        target_union: Some(union),
    }
}

/// The first key-value of each range response of a transaction, in order.
pub fn range_values(responses: Vec<super::pb::etcdserverpb::ResponseOp>) -> Vec<Option<KeyValue>> {
    responses
        .into_iter()
        .map(|op| match op.response {
            Some(response_op::Response::ResponseRange(range)) => range.kvs.into_iter().next(),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/x/nodes/"), b"/x/nodes0".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
        assert!(next_key(b"a").as_slice() > b"a".as_slice());
    }

    #[test]
    fn no_endpoint_is_a_configuration_error() {
        let config = EtcdConfig::new(Vec::new(), "/x");
        assert!(matches!(
            EtcdClient::connect(&config),
            Err(EtcdError::Config(_))
        ));
    }
}
