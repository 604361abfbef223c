//! `xlreg admin migrate`: moving a stopped registry between a sled data directory and an etcd
//! prefix, its identity included, so clients keep their regCred.dat (docs/ha.md).
//!
//! This module owns [`to_etcd`], [`to_data_dir`] and [`backup_etcd`] (a snapshot of a
//! registry on etcd, keys included, that `admin restore` turns into a sled data directory). Both refuse a target that holds anything
//! (a non-empty etcd prefix, a non-empty directory) and change nothing then. Records move as
//! a point-in-time snapshot of every tree ([`AdminStore::snapshot`](crate::store::AdminStore::snapshot), restored with
//! [`BackendChoice::create_from_snapshot`]); the identity moves as
//! [`crate::sealed_identity::IdentityMaterial`]: sealed under the secret file into etcd, or
//! written back as the data directory's key files (mode 0600).

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::backup::{sealed_key_files, write_with_keys, SnapshotSummary};
use super::target::NewDataDir;
use super::AdminError;
use crate::ha::etcd::{prefix_is_empty, EtcdCoordination};
use crate::ha::{Coordination, SealedKey};
use crate::registry::{write_key_files, RegistryError, RegistryIdentity};
use crate::sealed_identity::{seal, IdentityMaterial, IdentitySecret, SealedIdentity, SealedSlot};
use crate::store::etcd::EtcdConfig;
use crate::store::{Backend, BackendChoice};

/// What a migration moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateSummary {
    /// The registry's ID.
    pub registry: String,
    /// Nodes moved.
    pub nodes: u64,
    /// Clusters moved.
    pub clusters: u64,
    /// Where the registry is now (`etcd key /xlreg`, or the directory).
    pub target: String,
}

/// Moves the stopped sled registry in `from` into the empty etcd prefix of `etcd`, with its
/// identity sealed under `secret`. Blocking: run it on a blocking thread; `handle` is the
/// runtime the etcd connections run on.
pub fn to_etcd(
    from: &Path,
    etcd: &EtcdConfig,
    secret: IdentitySecret,
    handle: &tokio::runtime::Handle,
    now_ms: u64,
) -> Result<MigrateSummary, AdminError> {
    let source = super::open_offline(from)?;
    let meta = source
        .registry_meta()?
        .ok_or_else(|| AdminError::NoRegistry(from.to_path_buf()))?;
    // Loads the key files (and fails, naming the file, if one is missing).
    let identity = RegistryIdentity::load_or_create(&*source, Some(from), None, now_ms)?;
    let material = identity.material(meta.created_at_ms, now_ms)?;
    let coord = {
        let _entered = handle.enter();
        Arc::new(EtcdCoordination::connect(etcd).map_err(etcd_error)?)
    };
    let empty = handle
        .block_on(prefix_is_empty(&coord))
        .map_err(|e| etcd_error(e.0))?;
    if !empty {
        return Err(AdminError::EtcdNotEmpty(coord.describe()));
    }
    let snapshot = source.snapshot()?;
    drop(source);
    let target =
        BackendChoice::Etcd(etcd.clone()).create_from_snapshot(Path::new(""), &snapshot)?;
    let counts = target.counts()?;
    let slot = SealedKey::new(coord.clone(), handle.clone());
    let sealed = seal(&material, &secret).map_err(RegistryError::from)?;
    let created = slot
        .create(&sealed)
        .map_err(|e| AdminError::Registry(RegistryError::Sealed(slot_failed(&slot, e))))?;
    if !created {
        // Someone wrote an identity into the prefix between the check and now.
        return Err(AdminError::EtcdNotEmpty(coord.describe()));
    }
    Ok(MigrateSummary {
        registry: meta.id.to_hex(),
        nodes: counts.nodes,
        clusters: counts.clusters,
        target: coord.describe(),
    })
}

/// Moves the registry under the etcd prefix of `etcd` (stop its servers first) into the new
/// or empty directory `to`, its identity opened with `secret` and written as key files.
/// Blocking, like [`to_etcd`].
pub fn to_data_dir(
    etcd: &EtcdConfig,
    to: &Path,
    secret: IdentitySecret,
    handle: &tokio::runtime::Handle,
    now_ms: u64,
) -> Result<MigrateSummary, AdminError> {
    let target = NewDataDir::create(to)?;
    let (source, sealed) = open_etcd_registry(etcd, secret, handle)?;
    let meta = source
        .registry_meta()?
        .ok_or_else(|| AdminError::NoEtcdRegistry(describe(etcd)))?;
    let snapshot = source.snapshot()?;
    drop(source);
    let store = BackendChoice::Sled.create_from_snapshot(to, &snapshot)?;
    let counts = store.counts()?;
    drop(store);
    write_key_files(to, &sealed, now_ms)?;
    target.keep();
    Ok(MigrateSummary {
        registry: meta.id.to_hex(),
        nodes: counts.nodes,
        clusters: counts.clusters,
        target: to.display().to_string(),
    })
}

/// `xlreg admin backup --etcd`: a snapshot of the registry under the etcd prefix, at one
/// etcd revision, its keys included (opened with `secret`), written to `out` in the format
/// `xlreg admin restore` reads (which makes a sled data directory of it). Blocking.
pub fn backup_etcd(
    etcd: &EtcdConfig,
    secret: IdentitySecret,
    handle: &tokio::runtime::Handle,
    now_ms: u64,
    out: &mut dyn std::io::Write,
) -> Result<SnapshotSummary, AdminError> {
    let (store, sealed) = open_etcd_registry(etcd, secret, handle)?;
    let key_files = sealed_key_files(&sealed, now_ms)?;
    let view = store.view()?;
    write_with_keys(&*view, key_files, now_ms, out)
}

/// The registry under `etcd`'s prefix: its store, and its identity opened with `secret`
/// (which must be the registry's: the store's metadata names the same ID).
fn open_etcd_registry(
    etcd: &EtcdConfig,
    secret: IdentitySecret,
    handle: &tokio::runtime::Handle,
) -> Result<(Arc<dyn Backend>, IdentityMaterial), AdminError> {
    let coord: Arc<dyn Coordination> = {
        let _entered = handle.enter();
        Arc::new(EtcdCoordination::connect(etcd).map_err(etcd_error)?)
    };
    let slot = SealedKey::new(coord, handle.clone());
    let sealed = SealedIdentity::load_or_create(Box::new(slot), secret, || {
        Err::<_, AdminError>(AdminError::NoEtcdRegistry(describe(etcd)))
    })?
    .1;
    let store = BackendChoice::Etcd(etcd.clone()).open_existing(Path::new(""))?;
    let meta = store
        .registry_meta()?
        .ok_or_else(|| AdminError::NoEtcdRegistry(describe(etcd)))?;
    if meta.id.to_hex() != sealed.id {
        return Err(RegistryError::IdentityMismatch {
            stored: meta.id.to_hex(),
            sealed: sealed.id.clone(),
        }
        .into());
    }
    Ok((store, sealed))
}

fn describe(etcd: &EtcdConfig) -> String {
    format!("etcd {} under {}", etcd.endpoints.join(","), etcd.prefix)
}

fn etcd_error(error: impl std::fmt::Display) -> AdminError {
    AdminError::Etcd(error.to_string())
}

fn slot_failed(
    slot: &SealedKey,
    error: crate::sealed_identity::SlotError,
) -> crate::sealed_identity::SealError {
    crate::sealed_identity::SealError::Store {
        place: slot.place(),
        problem: error.0,
    }
}
