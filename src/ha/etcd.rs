//! [`Coordination`] on etcd, through the etcd backend's client
//! ([`crate::store::etcd::EtcdClient`]: timeouts, endpoint failover, safe retries).
//!
//! Every key is below the registry's prefix (`<prefix>/identity`, `<prefix>/servers/...`,
//! `<prefix>/election/sweeper`), beside the store's trees and never inside one, so
//! snapshots, views and restores of the records do not see them.
//!
//! Which requests are retried across endpoints: reads, lease grants and keep-alives, puts
//! of a fixed value, and the two compare transactions, whose retry after an answer was lost
//! is harmless: a put-if-absent that had applied finds its own value (which its callers
//! treat as success: the sealed identity reads it back, the election compares it with its
//! own), and a compare-replace that had applied loses its compare, after which the sealed
//! identity's update reads the stored value again and finds its change made.

use std::time::Duration;

use super::{CoordError, CoordFuture, Coordination, LeaseId};
use crate::store::etcd::client::{compare_revision, put_op, range_op, range_values};
use crate::store::etcd::pb::etcdserverpb::compare::{CompareResult, CompareTarget};
use crate::store::etcd::pb::etcdserverpb::{Compare, TxnRequest};
use crate::store::etcd::{EtcdClient, EtcdConfig, EtcdError};

/// The shared store's coordination keys on etcd, below one registry's prefix.
#[derive(Debug, Clone)]
pub struct EtcdCoordination {
    client: EtcdClient,
    /// `<prefix>/`.
    root: String,
}

impl EtcdCoordination {
    /// Connects (lazily) to the etcd of `config`, for the keys below its prefix. Call within
    /// the tokio runtime the connections should run on.
    pub fn connect(config: &EtcdConfig) -> Result<EtcdCoordination, EtcdError> {
        Ok(EtcdCoordination {
            client: EtcdClient::connect(config)?,
            root: format!("{}/", config.prefix.trim_end_matches('/')),
        })
    }

    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.root).into_bytes()
    }
}

/// A compare: `key`'s `target` revision (create or mod) equals `revision`.
fn revision_is(key: &[u8], target: CompareTarget, revision: i64) -> Compare {
    compare_revision(
        key.to_vec(),
        Vec::new(),
        target,
        CompareResult::Equal,
        revision,
    )
}

fn failed(error: EtcdError) -> CoordError {
    CoordError(error.to_string())
}

impl Coordination for EtcdCoordination {
    fn describe(&self) -> String {
        format!("etcd key {}", self.root.trim_end_matches('/'))
    }

    fn grant_lease(&self, ttl: Duration) -> CoordFuture<'_, LeaseId> {
        Box::pin(async move { self.client.lease_grant(ttl).await.map_err(failed) })
    }

    fn keep_alive(&self, lease: LeaseId) -> CoordFuture<'_, Option<Duration>> {
        Box::pin(async move {
            let ttl = self.client.lease_keep_alive(lease).await.map_err(failed)?;
            Ok((ttl > 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
        })
    }

    fn revoke(&self, lease: LeaseId) -> CoordFuture<'_, ()> {
        Box::pin(async move { self.client.lease_revoke(lease).await.map_err(failed) })
    }

    fn get(&self, key: &str) -> CoordFuture<'_, Option<(Vec<u8>, u64)>> {
        let key = self.key(key);
        Box::pin(async move {
            let found = self.client.get(&key).await.map_err(failed)?;
            Ok(found.map(|kv| (kv.value, kv.mod_revision.unsigned_abs())))
        })
    }

    fn get_prefix(&self, prefix: &str) -> CoordFuture<'_, Vec<(String, Vec<u8>)>> {
        let full = self.key(prefix);
        Box::pin(async move {
            let (found, _) = self.client.get_prefix(&full, 0).await.map_err(failed)?;
            Ok(found
                .into_iter()
                .map(|kv| {
                    let key = kv.key.get(self.root.len()..).unwrap_or_default();
                    (String::from_utf8_lossy(key).into_owned(), kv.value)
                })
                .collect())
        })
    }

    fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> CoordFuture<'_, Option<Vec<u8>>> {
        let key = self.key(key);
        let value = value.to_vec();
        Box::pin(async move {
            let request = TxnRequest {
                compare: vec![revision_is(&key, CompareTarget::Create, 0)],
                success: vec![put_op(key.clone(), value, lease.unwrap_or(0))],
                failure: vec![range_op(key, 0)],
            };
            let answer = self.client.txn_idempotent(request).await.map_err(failed)?;
            if answer.succeeded {
                return Ok(None);
            }
            Ok(Some(
                range_values(answer.responses)
                    .into_iter()
                    .next()
                    .flatten()
                    .map(|kv| kv.value)
                    .unwrap_or_default(),
            ))
        })
    }

    fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> CoordFuture<'_, ()> {
        let key = self.key(key);
        let value = value.to_vec();
        Box::pin(async move {
            self.client
                .put(&key, &value, lease.unwrap_or(0))
                .await
                .map(|_| ())
                .map_err(failed)
        })
    }

    fn replace(&self, key: &str, version: u64, value: &[u8]) -> CoordFuture<'_, Option<u64>> {
        let key = self.key(key);
        let value = value.to_vec();
        Box::pin(async move {
            let request = TxnRequest {
                compare: vec![revision_is(
                    &key,
                    CompareTarget::Mod,
                    i64::try_from(version).unwrap_or(i64::MAX),
                )],
                success: vec![put_op(key, value, 0)],
                failure: Vec::new(),
            };
            let answer = self.client.txn_idempotent(request).await.map_err(failed)?;
            let revision = answer.header.map_or(0, |h| h.revision);
            Ok(answer.succeeded.then_some(revision.unsigned_abs()))
        })
    }
}

/// Whether anything at all lives below `config`'s prefix (`xlreg admin migrate` refuses a
/// prefix that is not empty).
pub async fn prefix_is_empty(coord: &EtcdCoordination) -> Result<bool, CoordError> {
    let root = coord.root.as_bytes().to_vec();
    let (count, _) = coord.client.count_prefix(&root).await.map_err(failed)?;
    Ok(count == 0)
}
