//! The daemon's metrics HTTP endpoint (`serve --metrics-listen`): `GET /metrics` and
//! `GET /health`.
//!
//! This module owns the endpoint's listener and connections; hyper does the HTTP; the metric
//! set it renders is [`crate::metrics::Metrics`]. `/health` says 200 while the registry
//! serves and 503 from the moment shutdown begins; the daemon keeps the endpoint up until
//! the sessions in flight have finished or the shutdown grace is over, so a load balancer
//! sees the 503. It is meant for a Prometheus server and a load balancer's health check,
//! so it is small and bounded: at most [`MAX_CONNECTIONS`] connections at once (more are
//! closed on arrival), one request per connection, request headers within
//! [`HEADER_TIMEOUT`], and the whole connection within [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use crate::server::{admit, Admission, RefusalLog};
use crate::store::Backend;

/// Most endpoint connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last in all.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (hyper's minimum).
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// A bound metrics endpoint, ready to serve.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
}

impl MetricsEndpoint {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<MetricsEndpoint> {
        Ok(MetricsEndpoint {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `metrics` (with figures read from `store`) until the task is dropped or
    /// aborted.
    pub async fn run(self, metrics: Arc<Metrics>, store: Arc<dyn Backend>) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut refusals = RefusalLog::new("metrics");
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                admission = admit(self.listener.accept(), &limit) => {
                    let (stream, permit) = match admission {
                        Admission::Admitted { stream, permit, .. } => (stream, permit),
                        Admission::OverLimit(peer) => {
                            refusals.refused(peer, MAX_CONNECTIONS);
                            continue;
                        }
                        Admission::Failed => continue,
                    };
                    let metrics = metrics.clone();
                    let store = store.clone();
                    connections.spawn(async move {
                        serve_connection(stream, metrics, store).await;
                        drop(permit);
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    metrics: Arc<Metrics>,
    store: Arc<dyn Backend>,
) {
    let service = hyper::service::service_fn(move |request| {
        let metrics = metrics.clone();
        let store = store.clone();
        async move { Ok::<_, Infallible>(respond(&request, &metrics, &store).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "metrics endpoint: connection failed"),
        Err(_) => tracing::debug!("metrics endpoint: connection timed out"),
    }
}

async fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    store: &Arc<dyn Backend>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.render(store).await);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        "/health" => match store.health().reason() {
            Some(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("storage failed: {reason}\n"),
            ),
            None => match store.health().unavailable() {
                Some(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("storage unavailable: {reason}\n"),
                ),
                None if metrics.is_serving() => text(StatusCode::OK, "ok\n"),
                None => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            },
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /health\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
