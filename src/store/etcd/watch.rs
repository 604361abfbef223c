//! Watching a key prefix in etcd without missing a change: one watch stream, resumed from
//! the last revision seen + 1 when it is lost, and a [`WatchUpdate::Compacted`] when the
//! history it needed is gone (then the consumer re-reads what it cares about).
//!
//! This module owns [`watch_prefix`] and [`WatchUpdate`]. etcd's gRPC watch does not
//! resume by itself after a lost connection; this does, on the next endpoint.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::client::{counters, prefix_end, EtcdClient};
use super::pb::etcdserverpb::{
    watch_client::WatchClient, watch_request, WatchCreateRequest, WatchRequest,
};
use super::pb::mvccpb::Event;

/// What a prefix watch reports.
#[derive(Debug, Clone)]
pub enum WatchUpdate {
    /// Changes under the prefix, in revision order (puts and deletes; see
    /// the event's `type`).
    Events(Vec<Event>),
    /// The history from the revision the watch needed was compacted: changes may have been
    /// missed, re-read everything. The watch goes on from the compacted revision.
    Compacted,
    /// The stream was lost and is being resumed (nothing was missed: it resumes from the
    /// last revision seen + 1).
    Resuming,
}

/// How long to wait before resuming a lost stream, at most.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Watches every key under `prefix` from `start_revision` on, for as long as the returned
/// receiver is kept. Spawns its task on the current tokio runtime.
pub fn watch_prefix(
    client: &EtcdClient,
    prefix: Vec<u8>,
    start_revision: i64,
) -> mpsc::Receiver<WatchUpdate> {
    let (updates, receiver) = mpsc::channel(64);
    let client = client.clone();
    tokio::spawn(async move {
        let mut next = start_revision;
        let mut backoff = Duration::from_millis(50);
        loop {
            let outcome = watch_once(&client, &prefix, &mut next, &updates).await;
            if updates.is_closed() {
                return;
            }
            match outcome {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(error) => {
                    tracing::debug!(%error, next, "etcd watch lost; resuming");
                    counters()
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if updates.send(WatchUpdate::Resuming).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
    receiver
}

/// Runs one watch stream from `*next` until it ends; advances `*next` past every revision
/// delivered. `Ok` if it ended normally (compaction: re-watch at once).
async fn watch_once(
    client: &EtcdClient,
    prefix: &[u8],
    next: &mut i64,
    updates: &mpsc::Sender<WatchUpdate>,
) -> Result<(), String> {
    let (index, channel) = client.channel();
    let fail = |what: String| {
        client.skip_endpoint(index);
        what
    };
    let token = client
        .stream_token(channel.clone())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (requests, stream) = mpsc::channel(1);
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision: *next,
                progress_notify: true,
                ..Default::default()
            },
        )),
    };
    requests
        .send(create)
        .await
        .map_err(|_| "watch request stream closed".to_string())?;
    let mut request = tonic::Request::new(ReceiverStream::new(stream));
    if let Some(token) = token {
        request.metadata_mut().insert("token", token);
    }
    counters()
        .round_trips
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut responses =
        tokio::time::timeout(client.timeout(), WatchClient::new(channel).watch(request))
            .await
            .map_err(|_| fail("watch: no answer in time".into()))?
            .map_err(|s| fail(format!("watch: {s}")))?
            .into_inner();
    loop {
        // `requests` stays alive for as long as the stream is read: dropping it would end
        // the stream from our side.
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(fail("watch stream closed by etcd".into())),
            Err(status) => return Err(fail(format!("watch: {status}"))),
        };
        if response.compact_revision > 0 {
            *next = (*next).max(response.compact_revision);
            updates
                .send(WatchUpdate::Compacted)
                .await
                .map_err(|_| "watcher gone".to_string())?;
            return Ok(());
        }
        if response.canceled {
            return Err(fail(format!("watch cancelled: {}", response.cancel_reason)));
        }
        if let Some(header) = &response.header {
            if response.events.is_empty() && !response.created {
                // A progress notification: nothing below this revision is left to see.
                *next = (*next).max(header.revision + 1);
            }
        }
        if response.events.is_empty() {
            continue;
        }
        for event in &response.events {
            if let Some(kv) = &event.kv {
                *next = (*next).max(kv.mod_revision + 1);
            }
        }
        if updates
            .send(WatchUpdate::Events(response.events))
            .await
            .is_err()
        {
            drop(requests);
            return Ok(());
        }
    }
}
