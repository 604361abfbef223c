//! The contract between a wire's session core and the one driver that runs them all.
//!
//! A session core (xlReg/2: [`crate::protocol::ServerSession`]; xlReg 1.9:
//! [`crate::legacy::session::LegacySession`]) is a deterministic state machine in the manner
//! of quinn-proto: it owns no socket, no clock, no store handle and no global randomness. The
//! driver ([`crate::driver`]) feeds it what happened — bytes from the peer
//! ([`SessionCore::on_bytes`]), the result of a store read or write it asked for
//! ([`SessionCore::on_read`], [`SessionCore::on_written`]), a change to a cluster it watches
//! ([`SessionCore::on_changed`]), the passing of time ([`SessionCore::on_timeout`]) and
//! shutdown ([`SessionCore::on_shutdown`]) — and carries out each [`Step`] it hands back from
//! [`SessionCore::poll`]. Time is a plain millisecond count passed in by the caller
//! ([`Millis`]); the session's deadlines (the hello, the silence between requests, a held
//! GetCluster) are core state, exposed through [`SessionCore::poll_timeout`].
//!
//! This module also holds what both cores share: the [`Step`] type, the store [`Read`] a core
//! may ask for and the [`ClusterView`] it gets back, the session's [`Outcome`] and
//! [`SessionReport`], its [`Timeouts`], and `Exchange`, the lock-step bookkeeping (at
//! most one store operation or reply outstanding, the read deadline, the held wait) that
//! both cores embed, so the two wires cannot drift apart on it.

use crate::handlers::get_cluster::{GetOutcome, GetRequest};
use crate::handlers::{self, HandlerError, SessionState};
use crate::id::Id;
use crate::model::{ClusterRef, Write, Written};
use crate::model::{ClusterView, StoreError};
use crate::proto::{ErrCode, Tag, XlRegMsg};

/// A point in time or a span of it, in milliseconds. The driver passes a clock that never
/// goes backwards within a session and reads close to the Unix epoch time (records are
/// stamped with it); tests pass a virtual one.
pub type Millis = u64;

/// What the driver must do next for a session, on either wire.
#[derive(Debug)]
pub enum Step {
    /// Write `bytes` to the peer in one write. If `durable`, only once every store change
    /// made so far is on disk. If `close`, close the connection after writing. (A reply
    /// that reports a join wakes nobody: the store itself tells the cluster's watchers once
    /// the join is durable, [`crate::store::SessionStore::watch_cluster`].)
    Send {
        /// Whole wire bytes: an xlReg/2 frame with its length prefix, or a 1.9 message.
        bytes: Vec<u8>,
        /// Wait for the store to be durable before writing.
        durable: bool,
        /// Close after writing.
        close: bool,
    },
    /// Read the store and pass the result to [`SessionCore::on_read`].
    Read(Read),
    /// Apply `write` to the store, durably, and pass the result to
    /// [`SessionCore::on_written`].
    Write(Write),
    /// From now until the next [`Step::Send`], call [`SessionCore::on_changed`] whenever
    /// this cluster changes. The core asks for a fresh [`Step::Read`] right after, so a
    /// change between its first read and the watch is never missed.
    Watch(Id),
    /// Close the connection without a word.
    Close,
}

/// A store read a core asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The cluster with its members and their nodes' records.
    Cluster(ClusterRef),
    /// As `Cluster`, for a request carrying an admission proof (a list token's or the
    /// owner's): the driver refuses it while failed proofs are throttled.
    ClusterWithProof(ClusterRef),
}

/// The answer to a [`Read::Cluster`]: the cluster with its members' node records, `None` if
/// there is no such cluster, a refusal (failed proofs throttled) or a storage failure.
pub type ReadResult = Result<Option<ClusterView>, StoreError>;

/// How a session ended, as far as the core knows, for the one log line per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Still running.
    #[default]
    Open,
    /// The client said Bye.
    Bye,
    /// The registry sent an Error and closed.
    Refused(ErrCode),
    /// The handshake or a message failed to authenticate, a message was malformed, or the
    /// client broke lock-step.
    Dropped,
    /// The peer sent nothing, or not a whole message, within the deadline.
    TimedOut {
        /// True if the handshake was done (an idle timeout), false if not (a handshake
        /// timeout).
        established: bool,
        /// The deadline that passed.
        after_ms: Millis,
    },
    /// The peer fetched the registry's credentials (docs/protocol.md section 14.10).
    CredentialsSent,
    /// The peer announced an xlReg/2 frame over the limit.
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
}

/// What a session on either wire has done, for the one log line that ends it.
#[derive(Debug, Default)]
pub struct SessionReport {
    /// What the session established through the handlers (its node, its clusters).
    pub state: SessionState,
    /// Requests handled so far.
    pub requests: u32,
    /// The op of the latest request, `None` if it had no op or an unknown one.
    pub last_op: Option<Tag>,
    /// How the session ended (or `Open`).
    pub outcome: Outcome,
    /// The xlreg protocol version the handshake settled (2 or 3), once it is done; `None`
    /// before it and on the 1.9 wire.
    pub version: Option<u32>,
    /// The text of the Error the session was refused with, if it was: sent to the client,
    /// and kept for the log line, the only place an operator sees it (1.9 clients never
    /// show it).
    pub refusal: Option<String>,
    /// The refusal, if the session was refused over admission (docs/protocol.md 14.9):
    /// its metric reason, and whether it was a failed proof (counted by the throttle).
    pub admission_failure: Option<(&'static str, bool)>,
}

impl SessionReport {
    /// The node the session registered as, if any.
    pub fn node(&self) -> Option<&Id> {
        self.state.node.as_ref().map(|n| &n.id)
    }

    /// The cluster the session last joined, else created, if any.
    pub fn cluster(&self) -> Option<&Id> {
        self.state.joined.as_ref().or(self.state.created.as_ref())
    }
}

/// How long a peer may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the start of the session until its hello is whole.
    pub handshake_ms: Millis,
    /// From the end of a reply until the next request is whole.
    pub idle_ms: Millis,
}

/// One wire's session state machine, as the driver sees it. Every method is synchronous and
/// does no I/O; `now` is the caller's clock.
pub trait SessionCore {
    /// Bytes received from the peer, in whatever pieces they came.
    fn on_bytes(&mut self, bytes: &[u8]);
    /// The next thing to do, or `None` until something happens (more bytes, a store
    /// result, a change, a deadline).
    fn poll(&mut self, now: Millis) -> Option<Step>;
    /// The result of the [`Step::Read`] returned last.
    fn on_read(&mut self, result: ReadResult, now: Millis);
    /// The result of the [`Step::Write`] returned last.
    fn on_written(&mut self, result: Result<Written, StoreError>, now: Millis);
    /// The cluster of the latest [`Step::Watch`] changed.
    fn on_changed(&mut self);
    /// When [`on_timeout`](Self::on_timeout) is next due, if ever.
    fn poll_timeout(&self) -> Option<Millis>;
    /// Time has reached `now`: act on every deadline passed.
    fn on_timeout(&mut self, now: Millis);
    /// Shutdown has begun: a held reply is answered now with what there is.
    fn on_shutdown(&mut self);
    /// True if the session is between requests with nothing received, nothing held and
    /// nothing being answered: shutdown may close it now.
    fn is_idle(&self) -> bool;
    /// Bytes received that do not form a whole hello or message yet.
    fn buffered(&self) -> usize;
    /// True once the handshake is done.
    fn is_established(&self) -> bool;
    /// What the session has done so far.
    fn report(&self) -> &SessionReport;
}

/// What a core has outstanding with the driver.
#[derive(Debug)]
enum Pending {
    /// Nothing: the core may take the next request.
    Nothing,
    /// A [`Step::Write`] whose result has not come back.
    Write,
    /// A [`Step::Read`] for this GetCluster whose result has not come back.
    Read(GetRequest),
}

/// What a write recorded, for a wire whose state follows it (the 1.9 stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WrittenKind {
    /// A node registered.
    Node,
    /// A cluster created or found.
    Cluster,
    /// A node joined a cluster.
    Joined,
    /// An owner's change or a leave (never on the 1.9 wire).
    Admission,
}

/// A GetCluster reply held until the cluster fills or the wait ends.
#[derive(Debug)]
struct Held {
    /// The request, now naming the cluster by id and its slots limited to its size.
    request: GetRequest,
    /// When the wait ends.
    deadline: Millis,
    /// The wait is over: the next read is answered with what is there.
    expired: bool,
    /// The cluster changed (or the wait ended): read it again.
    reread: bool,
}

/// The lock-step bookkeeping both cores embed: the report, the store operation or reply
/// outstanding, the read deadline and a held GetCluster.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// What the session has done.
    pub(crate) report: SessionReport,
    timeouts: Timeouts,
    pending: Pending,
    /// A step decided (by a store result or a deadline) and not yet polled.
    next: Option<Step>,
    held: Option<Held>,
    /// When the peer must have sent a whole hello or request; `None` while the registry
    /// has the turn.
    read_deadline: Option<Millis>,
    closed: bool,
}

/// Seals a message for the wire: encodes and encrypts it into whole wire bytes.
pub(crate) type Seal<'a> = &'a mut dyn FnMut(&XlRegMsg) -> Vec<u8>;

impl Exchange {
    /// A session starting at `now`, awaiting its hello.
    pub(crate) fn new(timeouts: Timeouts, now: Millis) -> Exchange {
        Exchange {
            report: SessionReport::default(),
            timeouts,
            pending: Pending::Nothing,
            next: None,
            held: None,
            read_deadline: Some(now + timeouts.handshake_ms),
            closed: false,
        }
    }

    /// True once the session has ended (after a close or a last word).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// True if the core may take the next request now: nothing outstanding, nothing held,
    /// nothing queued.
    pub(crate) fn may_take_request(&self) -> bool {
        !self.closed
            && matches!(self.pending, Pending::Nothing)
            && self.held.is_none()
            && self.next.is_none()
    }

    /// True while a GetCluster reply is held (a request arriving now breaks lock-step).
    pub(crate) fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// The step to hand out before anything else: one already decided, or the re-read of a
    /// held GetCluster.
    pub(crate) fn take_next(&mut self) -> Option<Step> {
        if let Some(step) = self.next.take() {
            return Some(step);
        }
        if !matches!(self.pending, Pending::Nothing) {
            return None;
        }
        let held = self.held.as_mut()?;
        if !std::mem::take(&mut held.reread) {
            return None;
        }
        let request = held.request.clone();
        Some(self.read(request))
    }

    /// A request arrived: count it. The registry has the turn until its reply is out.
    pub(crate) fn request(&mut self, op: Option<Tag>) {
        self.report.requests += 1;
        self.report.last_op = op;
        self.read_deadline = None;
    }

    /// A reply that keeps the session open is handed out at `now` (the hello's, or a
    /// request's): the peer has `idle_ms` from then for its next request.
    pub(crate) fn reply(&mut self, bytes: Vec<u8>, durable: bool, now: Millis) -> Step {
        self.read_deadline = Some(now + self.timeouts.idle_ms);
        Step::Send {
            bytes,
            durable,
            close: false,
        }
    }

    /// Asks the driver for a write.
    pub(crate) fn write(&mut self, write: Write) -> Step {
        self.pending = Pending::Write;
        Step::Write(write)
    }

    /// Asks the driver for the cluster a GetCluster names.
    pub(crate) fn read(&mut self, request: GetRequest) -> Step {
        let target = request.target.clone();
        let proved = !matches!(request.asker, crate::model::rules::Asker::Node(_));
        self.pending = Pending::Read(request);
        Step::Read(if proved {
            Read::ClusterWithProof(target)
        } else {
            Read::Cluster(target)
        })
    }

    /// Takes the result of the write asked for and queues the reply built from it (sealed
    /// by `seal`) or the refusal. Returns what was written, `None` if nothing was (a
    /// refusal, or no write was outstanding: the driver broke lock-step, and the session is
    /// dropped).
    pub(crate) fn on_written(
        &mut self,
        result: Result<Written, StoreError>,
        now: Millis,
        seal: Seal<'_>,
    ) -> Option<WrittenKind> {
        if !matches!(self.pending, Pending::Write) {
            self.drop_session();
            return None;
        }
        self.pending = Pending::Nothing;
        let written = match result {
            Ok(written) => written,
            Err(error) => {
                let step = self.handler_error(HandlerError::from(error), seal);
                self.queue(step);
                return None;
            }
        };
        let kind = match &written {
            Written::Node(_) => WrittenKind::Node,
            Written::Cluster(..) => WrittenKind::Cluster,
            Written::Joined(_) => WrittenKind::Joined,
            Written::Token(..) | Written::Changed(_) => WrittenKind::Admission,
        };
        let reply = handlers::finish(&mut self.report.state, written);
        // The store answers a write only once it (and all it read) is durable.
        let step = self.reply(seal(&reply.msg), false, now);
        self.queue(step);
        Some(kind)
    }

    /// Takes the result of the read asked for at `now` and queues what the GetCluster comes
    /// to: the reply (sealed by `seal`), a refusal, or nothing while the reply is held (a
    /// watch and a re-read are queued the first time). A result nobody asked for drops the
    /// session.
    pub(crate) fn on_read(&mut self, result: ReadResult, now: Millis, seal: Seal<'_>) {
        let request = match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::Read(request) => request,
            Pending::Nothing | Pending::Write => {
                self.drop_session();
                return;
            }
        };
        let expired = self.held.as_ref().is_some_and(|held| held.expired);
        let outcome = result
            .map_err(HandlerError::from)
            .and_then(|view| handlers::get_cluster::answer(&request, view, expired));
        match outcome {
            Ok(GetOutcome::Ready(reply)) => {
                self.held = None;
                // Never show a member whose join is not yet on disk.
                let step = self.reply(seal(&reply), true, now);
                self.queue(step);
            }
            // Still incomplete after a change: keep holding.
            Ok(GetOutcome::Wait(_)) if self.held.is_some() => {}
            Ok(GetOutcome::Wait(wait)) => {
                self.held = Some(Held {
                    deadline: now + Millis::from(wait.wait_ms),
                    request: wait.request(),
                    expired: false,
                    // Read again once the watch is in place.
                    reread: true,
                });
                self.queue(Step::Watch(wait.cluster));
            }
            Err(error) => {
                self.held = None;
                let step = self.handler_error(error, seal);
                self.queue(step);
            }
        }
    }

    /// The Error reply (sealed by `seal`) for a refused request; the session closes after it.
    pub(crate) fn handler_error(&mut self, error: HandlerError, seal: Seal<'_>) -> Step {
        if let HandlerError::Refused(refusal) = &error {
            self.report.admission_failure = refusal
                .admission_reason()
                .map(|reason| (reason, refusal.is_failed_proof()));
        }
        let (code, description) = error.refusal();
        self.refuse_after(code, description, error.retry_after_ms(), seal)
    }

    /// An Error reply of class `code` (sealed by `seal`); the session closes after it.
    pub(crate) fn refuse(&mut self, code: ErrCode, description: String, seal: Seal<'_>) -> Step {
        self.refuse_after(code, description, None, seal)
    }

    /// An Error reply that also says how long a retry must wait (RetryAfterMs), if known.
    fn refuse_after(
        &mut self,
        code: ErrCode,
        description: String,
        retry_after_ms: Option<u32>,
        seal: Seal<'_>,
    ) -> Step {
        self.report.refusal = Some(description.clone());
        let mut error = handlers::error_message(code, description);
        error.retry_after_ms = retry_after_ms;
        self.last_word(&error, Outcome::Refused(code), seal)
    }

    /// Sends `msg` (Ack or Error, sealed by `seal`) as the session's last word, recording
    /// `outcome`.
    pub(crate) fn last_word(&mut self, msg: &XlRegMsg, outcome: Outcome, seal: Seal<'_>) -> Step {
        self.report.outcome = outcome;
        let bytes = seal(msg);
        self.close();
        Step::Send {
            bytes,
            durable: false,
            close: true,
        }
    }

    /// The watched cluster changed: read it again.
    pub(crate) fn changed(&mut self) {
        if let Some(held) = &mut self.held {
            held.reread = true;
        }
    }

    /// Ends a held wait now: the next read is answered with what is there.
    pub(crate) fn expire_wait(&mut self) {
        if let Some(held) = &mut self.held {
            if !held.expired {
                held.expired = true;
                held.reread = true;
            }
        }
    }

    /// The earliest deadline still to act on.
    pub(crate) fn poll_timeout(&self) -> Option<Millis> {
        if self.closed {
            return None;
        }
        match &self.held {
            Some(held) if !held.expired => Some(held.deadline),
            Some(_) => None,
            None => self.read_deadline,
        }
    }

    /// Acts on the deadlines passed by `now`: a held wait ends; returns true if the peer's
    /// deadline for a whole hello or request passed (the wire then decides what to say).
    pub(crate) fn timed_out(&mut self, now: Millis) -> bool {
        if self.closed {
            return false;
        }
        if let Some(held) = &self.held {
            if !held.expired && now >= held.deadline {
                self.expire_wait();
            }
            return false;
        }
        self.read_deadline.is_some_and(|deadline| now >= deadline)
    }

    /// The peer missed its deadline: record the timeout and close without a word.
    pub(crate) fn time_out(&mut self, established: bool) {
        let after_ms = if established {
            self.timeouts.idle_ms
        } else {
            self.timeouts.handshake_ms
        };
        self.report.outcome = Outcome::TimedOut {
            established,
            after_ms,
        };
        self.close();
        self.next = None;
    }

    /// Ends the session: nothing more is read, held or asked of the store; a last word
    /// already handed out or queued still goes, then every poll says [`Step::Close`].
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.held = None;
        self.read_deadline = None;
        self.pending = Pending::Nothing;
    }

    /// Queues `step` (decided by a store result) for the next poll.
    pub(crate) fn queue(&mut self, step: Step) {
        self.next = Some(step);
    }

    /// Closes without a word, recording the session as dropped.
    pub(crate) fn drop_session(&mut self) {
        self.report.outcome = Outcome::Dropped;
        self.close();
        self.next = None;
    }

    /// True if nothing is received (`buffered` is 0), held, queued or outstanding.
    pub(crate) fn is_idle(&self, buffered: usize) -> bool {
        buffered == 0 && self.may_take_request()
    }
}
