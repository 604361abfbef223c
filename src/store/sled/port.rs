//! The sled backend behind the store's ports: [`SessionStore`], [`AdminStore`] and
//! [`Backend`] for [`Store`].
//!
//! Session reads run inline on the caller's task (a lookup in sled's page cache, a pread
//! when it misses: measured cheaper than a hop to tokio's blocking pool); drawing a fresh id
//! (a transaction) runs on the blocking pool; writes go to the group commit writer
//! ([`Store::write_batch`]); the admin port is the store's own blocking API.

use std::path::Path;

use tokio::sync::watch;

use super::{apply, Store};
use crate::failstop::Health;
use crate::id::Id;
use crate::model::{ClusterRecord, ClusterRef, Counts, NodeRecord, RegistryMeta, Write, Written};
use crate::store::{
    AdminStore, Backend, Caps, ClusterView, NodeDeletion, Records, SessionStore, Snapshot,
    StorageError, StoreError, StoreFuture, StoreView, WriteAnswer,
};

impl Store {
    /// Runs the blocking read `read` on a clone of this store: on tokio's blocking pool if
    /// the caller runs on a runtime that has one, else right here.
    fn read_off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> StoreFuture<'static, Result<T, StorageError>> {
        let store = self.clone();
        Box::pin(async move {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => handle
                    .spawn_blocking(move || read(&store))
                    .await
                    .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?,
                Err(_) => read(&store),
            }
        })
    }

    /// Loads every record of `snapshot` into this store, which must hold no nodes and no
    /// clusters, and makes them durable.
    pub fn restore_records(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        if !self.inner.nodes.is_empty() || !self.inner.clusters.is_empty() {
            return Err(StorageError::NotEmpty {
                dir: self.data_dir().map(Path::to_path_buf).unwrap_or_default(),
            });
        }
        let records = snapshot.decode_all()?;
        self.transact(|t| apply::load(t, &records))?;
        if let Some(meta) = &records.meta {
            self.set_registry_meta(meta)?;
        }
        self.flush_blocking()
    }
}

impl SessionStore for Store {
    fn read_cluster(
        &self,
        cluster: ClusterRef,
    ) -> StoreFuture<'_, Result<Option<ClusterView>, StorageError>> {
        // Inline on the caller's worker, not on the blocking pool: a read is a lookup in sled's
        // page cache (a pread when it misses), and the hop to the blocking pool made a whole
        // session cost 6% more registry CPU than the previous release; inline, 1%
        // (docs/performance.md).
        Box::pin(async move { self.cluster_view(&cluster) })
    }

    fn read_node(&self, id: Id) -> StoreFuture<'_, Result<Option<NodeRecord>, StorageError>> {
        Box::pin(async move { self.node(&id) })
    }

    fn apply(&self, writes: Vec<Write>) -> StoreFuture<'_, Result<Vec<WriteAnswer>, StorageError>> {
        Box::pin(self.write_batch(writes))
    }

    fn watch_cluster(&self, cluster: &Id) -> watch::Receiver<()> {
        self.inner.events.subscribe(cluster)
    }

    fn fresh_id(&self) -> StoreFuture<'_, Result<Id, StorageError>> {
        self.read_off_runtime(|store| {
            store.transact(|t| apply::draw_unused_id(t, &store.inner.ids))
        })
    }

    fn durable(&self) -> StoreFuture<'_, Result<(), StorageError>> {
        Box::pin(Store::durable(self))
    }
}

impl AdminStore for Store {
    fn registry_meta(&self) -> Result<Option<RegistryMeta>, StorageError> {
        Store::registry_meta(self)
    }

    fn set_registry_meta(&self, meta: &RegistryMeta) -> Result<(), StorageError> {
        Store::set_registry_meta(self, meta)
    }

    fn node(&self, id: &Id) -> Result<Option<NodeRecord>, StorageError> {
        Store::node(self, id)
    }

    fn cluster(&self, cluster: &ClusterRef) -> Result<Option<ClusterRecord>, StorageError> {
        Store::cluster(self, cluster)
    }

    fn cluster_view(&self, cluster: &ClusterRef) -> Result<Option<ClusterView>, StorageError> {
        Store::cluster_view(self, cluster)
    }

    fn nodes(&self) -> Records<'_, NodeRecord> {
        Box::new(Store::nodes(self))
    }

    fn clusters(&self) -> Records<'_, ClusterRecord> {
        Box::new(Store::clusters(self))
    }

    fn delete_cluster_if(
        &self,
        cluster: &ClusterRef,
        condition: &dyn Fn(&ClusterRecord) -> bool,
    ) -> Result<Option<ClusterRecord>, StorageError> {
        Store::delete_cluster_if(self, cluster, condition)
    }

    fn delete_node(&self, id: &Id) -> Result<NodeDeletion, StorageError> {
        Store::delete_node(self, id)
    }

    fn set_caps(&self, caps: Caps) -> Result<(), StorageError> {
        Store::set_caps(self, caps)
    }

    fn apply_now(&self, write: &Write) -> Result<Written, StoreError> {
        Store::apply(self, write)
    }

    fn counts(&self) -> Result<Counts, StorageError> {
        Store::counts(self)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Store::size_on_disk(self)
    }

    fn schema_version(&self) -> Result<Option<u32>, StorageError> {
        Store::schema_version(self)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Store::snapshot(self)
    }

    fn view(&self) -> Result<Box<dyn StoreView + '_>, StorageError> {
        Ok(Box::new(Store::view(self)?))
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.restore_records(snapshot)
    }

    fn flush_blocking(&self) -> Result<(), StorageError> {
        Store::flush_blocking(self)
    }

    fn data_dir(&self) -> Option<&Path> {
        Store::data_dir(self)
    }
}

impl Backend for Store {
    fn health(&self) -> &Health {
        Store::health(self)
    }
}
