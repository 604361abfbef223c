//! Point-in-time views of a live sled store, read lazily in bounded memory.
//!
//! This module owns [`Store::view`], the view it returns (`SledView`), and the pre-images
//! every mutation records for the views open while it runs (`PreImages`, `Views`).
//!
//! [`Store::snapshot`] copies every tree into memory while the gate is closed: on a registry
//! of 100,000 clusters that is over a gigabyte, held by the daemon for the length of an
//! online export or backup. A view copies nothing. Opening one closes the gate only for as
//! long as it takes to register an empty pre-image map. From then on every mutation, which
//! holds the gate's shared side for its transaction, records for each key it is about to
//! change the value the key had before (or that it was absent), keeping only the *first*
//! pre-image per key, and it records it before its change commits. Reading the view walks the
//! live trees in key order and, for each key, takes the pre-image if one is recorded: a key
//! created after the view opened has the pre-image "absent" and is skipped, and keys deleted
//! after it opened are merged back in from their pre-images. Memory is then bounded by what
//! changes while the view is read, not by the size of the registry.
//!
//! Why the first pre-image is the value at opening: every write records before it changes
//! anything, so when a key is recorded for the first time nothing has changed it since the
//! view opened (that change would have recorded first). A transaction that records and then
//! is rerun (a sled conflict) or aborted recorded the value the key still has, which is the
//! value at opening. Why the walk misses nothing: a key the live iterator does not yield
//! although it existed at opening was removed before the iterator passed it, so its pre-image
//! was recorded before that; the walk looks the pre-images up after each step of the
//! iterator, under the map's lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use sled::IVec;

use super::snapshot::SLED_DEFAULT_TREE;
use super::Store;
use crate::store::{RawEntries, StorageError, StoreView};

/// Each changed key's value when the view opened (`None`: the key did not exist), per tree.
type TreeImages = BTreeMap<IVec, Option<IVec>>;

/// The pre-images recorded for one open view.
#[derive(Debug, Default)]
pub(super) struct PreImages(Mutex<HashMap<Vec<u8>, TreeImages>>);

impl PreImages {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, TreeImages>> {
        // Inserts only: a panic elsewhere cannot leave the map half-changed.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `before` as `key`'s value in `tree` when the view opened, unless a pre-image
    /// of the key is recorded already.
    fn record(&self, tree: &[u8], key: &[u8], before: Option<&IVec>) {
        let mut trees = self.lock();
        let images = match trees.get_mut(tree) {
            Some(images) => images,
            None => trees.entry(tree.to_vec()).or_default(),
        };
        if !images.contains_key(key) {
            images.insert(IVec::from(key), before.cloned());
        }
    }

    /// How many pre-images are recorded, over every tree.
    fn len(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }
}

/// The views open on one store.
#[derive(Debug, Default)]
pub(super) struct Views(RwLock<Vec<Arc<PreImages>>>);

impl Views {
    /// The views open now. Called with the gate passed, so no view opens until the caller's
    /// mutation is done (one may close meanwhile; recording into it is harmless).
    pub(super) fn open(&self) -> OpenViews {
        OpenViews(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn register(&self, images: Arc<PreImages>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(images);
    }

    fn unregister(&self, images: &Arc<PreImages>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|open| !Arc::ptr_eq(open, images));
    }

    /// How many views are open.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The views a mutation records its pre-images for (usually none).
#[derive(Debug, Default)]
pub(super) struct OpenViews(Vec<Arc<PreImages>>);

impl OpenViews {
    /// Whether no view is open (nothing to record).
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records that `key` of `tree` had the value `before` until now, for every open view.
    /// Called before the change commits.
    pub(super) fn record(&self, tree: &[u8], key: &[u8], before: Option<&IVec>) {
        for images in &self.0 {
            images.record(tree, key, before);
        }
    }

    /// Records `key`'s current value in `tree` for every open view, before a write outside a
    /// transaction changes it (the caller holds the gate).
    pub(super) fn record_current(
        &self,
        tree: &sled::Tree,
        name: &[u8],
        key: &[u8],
    ) -> Result<(), StorageError> {
        if !self.is_empty() {
            self.record(name, key, tree.get(key)?.as_ref());
        }
        Ok(())
    }
}

/// A consistent point-in-time view of a sled store (see the module docs).
pub struct SledView {
    store: Store,
    images: Arc<PreImages>,
    trees: Vec<(Vec<u8>, sled::Tree)>,
}

impl std::fmt::Debug for SledView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledView")
            .field("trees", &self.trees.len())
            .field("pre_images", &self.images.len())
            .finish_non_exhaustive()
    }
}

impl SledView {
    /// How many pre-images the view holds: what was changed since it opened.
    pub fn pre_images(&self) -> usize {
        self.images.len()
    }
}

impl Drop for SledView {
    fn drop(&mut self) {
        self.store.inner.views.unregister(&self.images);
    }
}

impl StoreView for SledView {
    fn tree_names(&self) -> Vec<Vec<u8>> {
        self.trees.iter().map(|(name, _)| name.clone()).collect()
    }

    fn entries(&self, tree: &[u8]) -> RawEntries<'_> {
        if let Err(error) = self.store.check_health() {
            return Box::new(std::iter::once(Err(error)));
        }
        match self.trees.iter().find(|(name, _)| name == tree) {
            Some((name, live)) => Box::new(Walk {
                live: live.iter(),
                images: &self.images,
                tree: name,
                last: None,
                ready: VecDeque::new(),
                done: false,
            }),
            None => Box::new(std::iter::empty()),
        }
    }
}

/// One tree of a view: the live tree's entries in key order, corrected by the pre-images.
struct Walk<'a> {
    live: sled::Iter,
    images: &'a PreImages,
    tree: &'a [u8],
    /// The last key the walk has passed (yielded or skipped).
    last: Option<IVec>,
    /// Entries found and not yet yielded, in key order.
    ready: VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl Walk<'_> {
    /// Takes one step of the live iterator: queues the keys deleted since the view opened
    /// that lie between the last key passed and the next live key, then the next live key
    /// as it was at opening (if it existed then).
    fn step(&mut self) -> Result<(), StorageError> {
        let next = self.live.next().transpose()?;
        let trees = self.images.lock();
        if let Some(images) = trees.get(self.tree) {
            let lower = match &self.last {
                Some(last) => Bound::Excluded(last.as_ref()),
                None => Bound::Unbounded,
            };
            let upper = match &next {
                Some((key, _)) => Bound::Excluded(key.as_ref()),
                None => Bound::Unbounded,
            };
            let deleted = images
                .range::<[u8], _>((lower, upper))
                .filter_map(|(key, before)| Some((key.to_vec(), before.as_ref()?.to_vec())));
            self.ready.extend(deleted);
        }
        match next {
            Some((key, value)) => {
                let before = trees.get(self.tree).and_then(|images| images.get(&key));
                match before {
                    // Unchanged since the view opened.
                    None => self.ready.push_back((key.to_vec(), value.to_vec())),
                    Some(Some(before)) => self.ready.push_back((key.to_vec(), before.to_vec())),
                    // Created after the view opened.
                    Some(None) => {}
                }
                drop(trees);
                self.last = Some(key);
            }
            None => self.done = true,
        }
        Ok(())
    }
}

impl Iterator for Walk<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.ready.pop_front() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            if let Err(error) = self.step() {
                self.done = true;
                return Some(Err(error));
            }
        }
    }
}

impl Store {
    /// How many views of this store are open (tests check that none is left behind).
    #[cfg(test)]
    pub(crate) fn open_views(&self) -> usize {
        self.inner.views.count()
    }

    /// A consistent point-in-time view of every tree, read lazily (see the module docs): the
    /// gate is closed only while the view registers, and mutations go on while it is read.
    pub fn view(&self) -> Result<SledView, StorageError> {
        Ok(self.view_and(|| Ok(()))?.0)
    }

    /// Opens a view and runs `also` at the same instant, under the same closed gate (tests
    /// copy the trees there, to compare).
    fn view_and<T>(
        &self,
        also: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<(SledView, T), StorageError> {
        self.check_health()?;
        let db = &self.inner.db;
        let images = Arc::new(PreImages::default());
        let _closed = self.inner.gate.close();
        let mut trees = Vec::new();
        for name in db.tree_names() {
            if name.as_ref() != SLED_DEFAULT_TREE {
                trees.push((name.to_vec(), db.open_tree(&name)?));
            }
        }
        // In name order, as a snapshot's trees are.
        trees.sort_by(|a, b| a.0.cmp(&b.0));
        let also = also()?;
        self.inner.views.register(Arc::clone(&images));
        let view = SledView {
            store: self.clone(),
            images,
            trees,
        };
        Ok((view, also))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cluster, node};
    use super::*;
    use crate::model::{ClusterRef, RegistryMeta};
    use crate::store::{NodeDeletion, Snapshot};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Waits (at most 10 s) until `ops` has passed `target`.
    fn wait_for(ops: &AtomicUsize, target: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while ops.load(Ordering::SeqCst) < target && Instant::now() < until {
            std::thread::yield_now();
        }
    }

    /// Opens a view while three threads create clusters, register nodes and join them,
    /// delete clusters and free nodes and rename the registry, and keeps them writing while
    /// the view is read: it reads exactly the snapshot copied under the same closed gate.
    #[test]
    fn a_view_opened_during_concurrent_writes_reads_the_state_at_opening() {
        let store = Store::temporary().unwrap();
        let meta = |name: &str| RegistryMeta {
            name: name.into(),
            id: crate::id::Id::from_bytes(&[4u8; 32]).unwrap(),
            created_at_ms: 3,
        };
        store.set_registry_meta(&meta("reg")).unwrap();
        for c in 0..200 {
            let cluster = cluster(&store, &format!("old{c}"), 3, 1);
            let member = node(&store, &format!("m{c}"), 1);
            store
                .join(&ClusterRef::Id(cluster.id.clone()), &member, 2)
                .unwrap();
        }
        let free: Vec<_> = (0..100)
            .map(|n| node(&store, &format!("free{n}"), 1))
            .collect();

        let stop = AtomicBool::new(false);
        let ops = AtomicUsize::new(0);
        let images = std::thread::scope(|scope| {
            // Creates clusters and joins new nodes to them and to old clusters.
            scope.spawn(|| {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let c = cluster(&store, &format!("new{i}"), 3, 1);
                    let n = node(&store, &format!("joiner{i}"), 1);
                    store.join(&ClusterRef::Id(c.id), &n, 5).unwrap();
                    let old = ClusterRef::Name(format!("old{}", i % 200));
                    let _ = store.join(&old, &n, 5);
                    ops.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            });
            // Deletes old clusters and free nodes.
            scope.spawn(|| {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && i < 200 {
                    let old = ClusterRef::Name(format!("old{}", (i * 7) % 200));
                    store.delete_cluster(&old).unwrap();
                    if let Some(n) = free.get(i) {
                        assert!(matches!(
                            store.delete_node(&n.id).unwrap(),
                            NodeDeletion::Deleted(_)
                        ));
                    }
                    ops.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            });
            // Renames the registry.
            scope.spawn(|| {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    store.set_registry_meta(&meta(&format!("reg{i}"))).unwrap();
                    ops.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            });

            wait_for(&ops, 50);
            let (view, expected) = store.view_and(|| store.copy_trees()).unwrap();
            let opened_at = ops.load(Ordering::SeqCst);
            let mut read = Snapshot::default();
            for name in view.tree_names() {
                let mut entries = crate::store::sled::snapshot::TreeEntries::new();
                for (n, entry) in view.entries(&name).enumerate() {
                    let (key, value) = entry.unwrap();
                    entries.insert(key, value);
                    // Let the writers change things while the tree is read.
                    if n % 8 == 0 {
                        wait_for(&ops, ops.load(Ordering::SeqCst) + 1);
                    }
                }
                read.trees.insert(name, entries);
            }
            stop.store(true, Ordering::SeqCst);
            assert!(
                ops.load(Ordering::SeqCst) > opened_at + 40,
                "the writers did not write while the view was read"
            );
            assert!(view.pre_images() > 0);
            assert_eq!(read, expected);
            assert_ne!(store.copy_trees().unwrap(), expected);
            // Closing the view unregisters it at once; a mutation already running when it
            // closed may still hold its pre-images until that mutation ends.
            let images = Arc::downgrade(&view.images);
            drop(view);
            assert_eq!(store.open_views(), 0);
            images
        });
        // Once the writers have stopped, nothing of the view stays behind it.
        assert!(images.upgrade().is_none());
    }

    /// A mutation records only into the views open while it runs, and a transaction that is
    /// refused (changes nothing) leaves what a view reads unchanged.
    #[test]
    fn refused_writes_and_closed_views_leave_nothing_behind() {
        let store = Store::temporary().unwrap();
        let c = cluster(&store, "web", 1, 1);
        let a = node(&store, "a", 1);
        let b = node(&store, "b", 1);
        store.join(&ClusterRef::Id(c.id.clone()), &a, 2).unwrap();
        let (view, expected) = store.view_and(|| store.copy_trees()).unwrap();
        // Full: refused.
        assert!(store.join(&ClusterRef::Id(c.id.clone()), &b, 3).is_err());
        let read: Snapshot = Snapshot {
            trees: view
                .tree_names()
                .into_iter()
                .map(|name| {
                    let entries = view.entries(&name).collect::<Result<_, _>>().unwrap();
                    (name, entries)
                })
                .collect(),
        };
        assert_eq!(read, expected);
        drop(view);
        node(&store, "c", 1);
        assert_eq!(store.open_views(), 0);
    }
}
