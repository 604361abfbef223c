//! Telling whoever waits on a cluster that it changed.
//!
//! This module owns [`ClusterEvents`]. Each store keeps one and announces every change to a
//! cluster once the change is durable; a GetCluster that waits for a cluster to fill
//! subscribes before it reads the cluster, so a change between its read and its wait is
//! never missed.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::id::Id;

/// Wakes those waiting for a cluster to change. A waiter subscribes before it reads the
/// cluster, so a change between its read and its wait is never missed.
#[derive(Debug, Default)]
pub struct ClusterEvents {
    channels: Mutex<HashMap<Id, watch::Sender<()>>>,
}

impl ClusterEvents {
    /// A receiver that sees every change to `cluster` announced from now on.
    pub fn subscribe(&self, cluster: &Id) -> watch::Receiver<()> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(cluster.clone())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Announces that `cluster` changed (after the change is durable).
    pub fn notify(&self, cluster: &Id) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = channels.get(cluster) {
            if sender.send(()).is_err() {
                // Nobody waits on this cluster any more.
                channels.remove(cluster);
            }
        }
    }

    /// Announces a change to every watched cluster: for a backend that cannot tell which
    /// changed (its change feed lost history), so that every waiter re-reads.
    pub fn notify_all(&self) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|_, sender| sender.send(()).is_ok());
    }

    /// Announces the clusters that `answers` (a batch's answers) changed: every join.
    pub(crate) fn notify_joins<'a>(
        &self,
        answers: impl IntoIterator<Item = &'a super::WriteAnswer>,
    ) {
        for answer in answers {
            if let Ok(super::Written::Joined(joined)) = answer {
                self.notify(&joined.cluster.id);
            }
        }
    }
}
