//! Applying a [`Write`] to the records of any backend: the one implementation of what a
//! write does, shared by every backend so they cannot drift apart.
//!
//! A backend gives [`apply_write`] its records through [`RecordTx`] (one transaction's
//! reads and writes); `apply_write` reads what the write needs, asks the pure rules of
//! [`crate::model::rules`] what to store, and stores it. Every write decides before it
//! writes, so a refused write has changed nothing and the batch can go on.

use super::{IdSource, SnapshotRecords, StorageError, WriteAnswer};
use crate::id::Id;
use crate::model::{
    rules, ClusterRecord, ClusterRef, JoinOutcome, NewCluster, NewNode, NodeRecord, OwnerChange,
    Proof, Refusal, Registration, RegistrationOutcome, TokenClaim, Write, Written,
};

/// How many fresh ids are drawn before giving up on finding an unused one.
pub(crate) const MAX_ID_TRIES: u32 = 16;

/// One transaction's view of a backend's records.
pub(crate) trait RecordTx {
    /// How the transaction fails (a backend may need to carry a conflict, say).
    type Error;

    /// Wraps a storage failure detected while applying (a corrupt record, no fresh id).
    fn fail(error: StorageError) -> Self::Error;

    /// The node with this id.
    fn node(&mut self, id: &Id) -> Result<Option<NodeRecord>, Self::Error>;

    /// Whether a node has this id.
    fn has_node(&mut self, id: &Id) -> Result<bool, Self::Error>;

    /// The cluster stored under these id bytes.
    fn cluster(&mut self, id: &[u8]) -> Result<Option<ClusterRecord>, Self::Error>;

    /// Whether a cluster has this id.
    fn has_cluster(&mut self, id: &Id) -> Result<bool, Self::Error>;

    /// The id bytes the name index holds for this cluster name.
    fn cluster_id_named(&mut self, name: &str) -> Result<Option<Vec<u8>>, Self::Error>;

    /// Stores a node record under its id.
    fn put_node(&mut self, node: &NodeRecord) -> Result<(), Self::Error>;

    /// Stores a cluster record under its id.
    fn put_cluster(&mut self, cluster: &ClusterRecord) -> Result<(), Self::Error>;

    /// Points the name index's entry for `name` at the cluster `id`.
    fn put_name(&mut self, name: &str, id: &Id) -> Result<(), Self::Error>;

    /// Removes a cluster record, and its name from the index if the name points at it.
    fn remove_cluster(&mut self, cluster: &ClusterRecord) -> Result<(), Self::Error>;

    /// Counts one more node, created by this transaction, against the registry's node cap
    /// ([`crate::store::Caps`]), or refuses it ([`Refusal::RegistryFull`]) if that would pass
    /// the cap. Counts what this transaction created before. Called only for a node about to
    /// be stored as new. The default: no cap.
    fn admit_node(&mut self) -> Result<Result<(), Refusal>, Self::Error> {
        Ok(Ok(()))
    }

    /// As [`RecordTx::admit_node`], for a cluster about to be created.
    fn admit_cluster(&mut self) -> Result<Result<(), Refusal>, Self::Error> {
        Ok(Ok(()))
    }
}

/// Looks a cluster up by id or name. A name that points at no cluster is corruption.
pub(crate) fn resolve<T: RecordTx>(
    tx: &mut T,
    cluster: &ClusterRef,
) -> Result<Option<ClusterRecord>, T::Error> {
    match cluster {
        ClusterRef::Id(id) => tx.cluster(id.as_bytes()),
        ClusterRef::Name(name) => {
            let Some(id) = tx.cluster_id_named(name)? else {
                return Ok(None);
            };
            match tx.cluster(&id)? {
                Some(record) => Ok(Some(record)),
                None => Err(T::fail(StorageError::Corrupt(format!(
                    "cluster name {name:?} points at cluster {} which does not exist",
                    hex::encode(&id)
                )))),
            }
        }
    }
}

/// Draws ids from `ids` until one is used by no node and no cluster.
pub(crate) fn draw_unused_id<T: RecordTx>(tx: &mut T, ids: &IdSource) -> Result<Id, T::Error> {
    for _ in 0..MAX_ID_TRIES {
        let id = ids.draw();
        if !tx.has_node(&id)? && !tx.has_cluster(&id)? {
            return Ok(id);
        }
    }
    Err(T::fail(StorageError::NoFreshId {
        tries: MAX_ID_TRIES,
    }))
}

/// Applies one write: what it did, or the rule that refused it (then nothing changed).
pub(crate) fn apply_write<T: RecordTx>(
    tx: &mut T,
    write: &Write,
    ids: &IdSource,
) -> Result<WriteAnswer, T::Error> {
    Ok(match write {
        Write::RegisterNode { node, now_ms } => {
            register(tx, node, *now_ms, ids)?.map(Written::Node)
        }
        Write::CreateCluster { cluster, now_ms } => create(tx, cluster, *now_ms, ids)?
            .map(|(record, created)| Written::Cluster(record, created)),
        Write::Join {
            cluster,
            node,
            token,
            now_ms,
        } => join(tx, cluster, node, token.as_ref(), *now_ms)?.map(Written::Joined),
        Write::Owner {
            cluster,
            proof,
            change,
            now_ms,
        } => owner(tx, cluster, proof, change, *now_ms)?,
        Write::Leave { cluster, node } => leave(tx, cluster, node)?.map(Written::Changed),
    })
}

/// Registers or re-registers a node ([`rules::register`]); a node without an id gets an
/// unused one from `ids`.
pub(crate) fn register<T: RecordTx>(
    tx: &mut T,
    node: &NewNode,
    now_ms: u64,
    ids: &IdSource,
) -> Result<Result<Registration, Refusal>, T::Error> {
    let (id, existing) = match &node.id {
        Some(id) => (id.clone(), tx.node(id)?),
        None => (draw_unused_id(tx, ids)?, None),
    };
    let registration = match rules::register(node, id, existing, now_ms) {
        Ok(registration) => registration,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if registration.outcome == RegistrationOutcome::Created {
        if let Err(refusal) = tx.admit_node()? {
            return Ok(Err(refusal));
        }
    }
    if registration.outcome != RegistrationOutcome::Unchanged {
        tx.put_node(&registration.node)?;
    }
    Ok(Ok(registration))
}

/// Creates a cluster or finds the one of that name ([`rules::create`]); a new cluster gets
/// an unused id from `ids`. Returns the cluster and whether it was created; a new cluster
/// past the registry's cap is refused ([`Refusal::RegistryFull`]), and so is a name taken
/// by another creator ([`Refusal::NameTaken`]).
pub(crate) fn create<T: RecordTx>(
    tx: &mut T,
    cluster: &NewCluster,
    now_ms: u64,
    ids: &IdSource,
) -> Result<Result<(ClusterRecord, bool), Refusal>, T::Error> {
    if let Err(refusal) = rules::check_creator(cluster) {
        return Ok(Err(refusal));
    }
    let existing = resolve(tx, &ClusterRef::Name(cluster.name.clone()))?;
    if existing.is_none() {
        if let Err(refusal) = tx.admit_cluster()? {
            return Ok(Err(refusal));
        }
    }
    let (record, created) =
        match rules::create(cluster, existing, now_ms, || draw_unused_id(tx, ids))? {
            Ok(answer) => answer,
            Err(refusal) => return Ok(Err(refusal)),
        };
    if created {
        tx.put_cluster(&record)?;
        tx.put_name(&record.name, &record.id)?;
    }
    Ok(Ok((record, created)))
}

/// Joins a registered node to a cluster under the cluster's admission
/// ([`rules::join_admitted`]), reading the node's current record: the token's check, its
/// use and the slot are one cluster record, read and stored in this transaction.
pub(crate) fn join<T: RecordTx>(
    tx: &mut T,
    cluster: &ClusterRef,
    node: &Id,
    token: Option<&TokenClaim>,
    now_ms: u64,
) -> Result<Result<JoinOutcome, Refusal>, T::Error> {
    let named = cluster.to_string();
    let Some(record) = resolve(tx, cluster)? else {
        return Ok(Err(rules::no_cluster_for(token, &named)));
    };
    let Some(node) = tx.node(node)? else {
        return Ok(Err(Refusal::NoSuchNode(node.clone())));
    };
    match rules::join_admitted(record, &node, token, &named, now_ms) {
        Ok(joined) => {
            tx.put_cluster(&joined.cluster)?;
            Ok(Ok(joined))
        }
        Err(refusal) => Ok(Err(refusal)),
    }
}

/// Applies an owner's change ([`rules::owner_change`]): stores the cluster, or deletes it.
pub(crate) fn owner<T: RecordTx>(
    tx: &mut T,
    cluster: &ClusterRef,
    proof: &Proof,
    change: &OwnerChange,
    now_ms: u64,
) -> Result<Result<Written, Refusal>, T::Error> {
    let record = resolve(tx, cluster)?;
    let outcome = match rules::owner_change(record, proof, change, &cluster.to_string(), now_ms) {
        Ok(outcome) => outcome,
        Err(refusal) => return Ok(Err(refusal)),
    };
    match &outcome.store {
        Some(stored) => tx.put_cluster(stored)?,
        None => tx.remove_cluster(&outcome.cluster)?,
    }
    Ok(Ok(match outcome.token {
        Some(token) => Written::Token(outcome.cluster, token),
        None => Written::Changed(outcome.cluster),
    }))
}

/// A member leaves a cluster ([`rules::leave`]).
pub(crate) fn leave<T: RecordTx>(
    tx: &mut T,
    cluster: &ClusterRef,
    node: &Id,
) -> Result<Result<ClusterRecord, Refusal>, T::Error> {
    let record = resolve(tx, cluster)?;
    match rules::leave(record, node, &cluster.to_string()) {
        Ok(left) => {
            tx.put_cluster(&left)?;
            Ok(Ok(left))
        }
        Err(refusal) => Ok(Err(refusal)),
    }
}

/// Deletes the cluster if `condition` holds for it now; returns the deleted record.
pub(crate) fn delete_cluster_if<T: RecordTx>(
    tx: &mut T,
    cluster: &ClusterRef,
    condition: &dyn Fn(&ClusterRecord) -> bool,
) -> Result<Option<ClusterRecord>, T::Error> {
    let Some(record) = resolve(tx, cluster)? else {
        return Ok(None);
    };
    if !condition(&record) {
        return Ok(None);
    }
    tx.remove_cluster(&record)?;
    Ok(Some(record))
}

/// Stores every record of `records` (a snapshot's, restored into an empty store).
pub(crate) fn load<T: RecordTx>(tx: &mut T, records: &SnapshotRecords) -> Result<(), T::Error> {
    for node in &records.nodes {
        tx.put_node(node)?;
    }
    for cluster in &records.clusters {
        tx.put_cluster(cluster)?;
        tx.put_name(&cluster.name, &cluster.id)?;
    }
    Ok(())
}
