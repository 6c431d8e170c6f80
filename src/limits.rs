//! Admission limits for peers that have not signed in, and the counter of
//! what was refused to them.
//!
//! - [`Limiter`]: how many of one thing (connections in their handshake,
//!   sign-ins waiting for a person) one source and everybody together may
//!   hold at once. A [`Permit`] gives its place back when dropped. The
//!   per-source share is what keeps one address from locking out another.
//! - [`Refusals`]: refusals of unauthenticated peers, counted per source and
//!   reason and handed out as one aggregate per source and interval, so an
//!   anonymous flood costs one audit record a minute, not one per attempt.
//!
//! Pure bookkeeping: no sockets, no clock of its own (callers pass `now`),
//! never a panic (a poisoned lock is taken over, the counts are plain numbers).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What limits are kept per: an IPv4 address, or the /64 an IPv6 address is
/// in (one host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a [`Limiter`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("too many from this address")]
    Source,
    #[error("too many from everyone together")]
    Everyone,
}

/// At most `per_source` places per [`Source`] and `total` places overall.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<LimiterInner>,
}

struct LimiterInner {
    per_source: usize,
    total: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_source: HashMap<Source, usize>,
}

impl Limiter {
    pub fn new(per_source: usize, total: usize) -> Limiter {
        Limiter { inner: Arc::new(LimiterInner { per_source, total, held: Mutex::new(Held::default()) }) }
    }

    /// A place for `source`, or which limit is reached. The source's own
    /// share is checked first, so a source at its share is told so even
    /// when everyone together is also at the limit.
    pub fn try_acquire(&self, source: Source) -> Result<Permit, Full> {
        let mut held = lock(&self.inner.held);
        let mine = held.by_source.get(&source).copied().unwrap_or(0);
        if mine >= self.inner.per_source {
            return Err(Full::Source);
        }
        if held.total >= self.inner.total {
            return Err(Full::Everyone);
        }
        held.total += 1;
        held.by_source.insert(source, mine + 1);
        Ok(Permit { inner: Arc::clone(&self.inner), source })
    }

    /// Places `source` holds now.
    pub fn held_by(&self, source: Source) -> usize {
        lock(&self.inner.held).by_source.get(&source).copied().unwrap_or(0)
    }

    /// Places held by everyone now.
    pub fn held(&self) -> usize {
        lock(&self.inner.held).total
    }
}

/// One place in a [`Limiter`], given back on drop.
pub struct Permit {
    inner: Arc<LimiterInner>,
    source: Source,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("source", &self.source).finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = lock(&self.inner.held);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

/// What was refused to a peer that had not signed in. The code is stable:
/// audit records and counters use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// SSH: the source already has its share of connections that have not signed in.
    SshConnectionsPerSource,
    /// SSH: everyone together has `ssh.max_unauthenticated` connections that have not signed in.
    SshConnectionsTotal,
    /// SSH: no sign-in begun within `ssh.preauth_timeout`.
    SshPreauthTimeout,
    /// SSH: the source already waits for its share of device-flow sign-ins.
    SshSignInsPerSource,
    /// SSH: `ssh.max_pending_sign_ins` are waiting already.
    SshSignInsTotal,
    /// RDP: the source already has its share of connections in their handshake.
    RdpHandshakesPerSource,
    /// RDP: `rdp.max_handshakes` connections are in their handshake.
    RdpHandshakesTotal,
    /// RDP: no ticket, a malformed one, or one that does not verify.
    RdpBadTicket,
    /// RDP: a ticket that was used before.
    RdpReplayedTicket,
    /// RDP: the connection sequence broke or stalled before a ticket was checked.
    RdpMalformed,
    /// API: the source already has its share of connections.
    ApiConnectionsPerSource,
    /// API: `api.max_connections` are open.
    ApiConnectionsTotal,
    /// API: the source already has its share of sign-ins in progress.
    ApiSignInsPerSource,
    /// API: `api.max_pending_sign_ins` are in progress.
    ApiSignInsTotal,
    /// API: a request body larger than `api.max_body`.
    ApiBodyTooLarge,
    /// API: a request body not received within `api.body_timeout`.
    ApiBodyTimeout,
    /// API: a request not answered within `api.request_timeout`.
    ApiRequestTimeout,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::SshConnectionsPerSource => "ssh.connections-per-source",
            Reason::SshConnectionsTotal => "ssh.connections-total",
            Reason::SshPreauthTimeout => "ssh.preauth-timeout",
            Reason::SshSignInsPerSource => "ssh.sign-ins-per-source",
            Reason::SshSignInsTotal => "ssh.sign-ins-total",
            Reason::RdpHandshakesPerSource => "rdp.handshakes-per-source",
            Reason::RdpHandshakesTotal => "rdp.handshakes-total",
            Reason::RdpBadTicket => "rdp.bad-ticket",
            Reason::RdpReplayedTicket => "rdp.replayed-ticket",
            Reason::RdpMalformed => "rdp.malformed",
            Reason::ApiConnectionsPerSource => "api.connections-per-source",
            Reason::ApiConnectionsTotal => "api.connections-total",
            Reason::ApiSignInsPerSource => "api.sign-ins-per-source",
            Reason::ApiSignInsTotal => "api.sign-ins-total",
            Reason::ApiBodyTooLarge => "api.body-too-large",
            Reason::ApiBodyTimeout => "api.body-timeout",
            Reason::ApiRequestTimeout => "api.request-timeout",
        }
    }
}

/// Sources tracked separately in one interval; past it, refusals from new
/// sources are added up under "other sources" (memory stays bounded when
/// the flood comes from many addresses).
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// Refusals from one source (or, with `source: None`, from all sources past
/// [`MAX_TRACKED_SOURCES`]) in one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub source: Option<Source>,
    pub counts: BTreeMap<Reason, u64>,
    /// When the first of them happened.
    pub since: Instant,
}

impl Aggregate {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// `{"ssh.preauth-timeout": 12, ...}`
    pub fn counts_by_code(&self) -> BTreeMap<&'static str, u64> {
        self.counts.iter().map(|(r, n)| (r.code(), *n)).collect()
    }
}

/// Counts refusals by source and reason; see the module documentation.
pub struct Refusals {
    interval: Duration,
    max_sources: usize,
    state: Mutex<RefusalState>,
}

#[derive(Default)]
struct RefusalState {
    open: HashMap<Source, Aggregate>,
    other: Option<Aggregate>,
    /// Since start, by reason: the counter a metrics endpoint exports.
    totals: BTreeMap<Reason, u64>,
}

impl Refusals {
    pub fn new(interval: Duration) -> Refusals {
        Refusals::with_capacity(interval, MAX_TRACKED_SOURCES)
    }

    pub fn with_capacity(interval: Duration, max_sources: usize) -> Refusals {
        Refusals { interval, max_sources, state: Mutex::new(RefusalState::default()) }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn record(&self, source: Source, reason: Reason, now: Instant) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        *state.totals.entry(reason).or_insert(0) += 1;
        let fresh = || Aggregate { source: Some(source), counts: BTreeMap::new(), since: now };
        let window = if state.open.contains_key(&source) || state.open.len() < self.max_sources {
            state.open.entry(source).or_insert_with(fresh)
        } else {
            state.other.get_or_insert_with(|| Aggregate { source: None, counts: BTreeMap::new(), since: now })
        };
        *window.counts.entry(reason).or_insert(0) += 1;
    }

    /// The aggregates whose interval is over at `now`; they are forgotten here.
    pub fn take_due(&self, now: Instant) -> Vec<Aggregate> {
        let mut state = lock(&self.state);
        let due = |a: &Aggregate| now.saturating_duration_since(a.since) >= self.interval;
        let sources: Vec<Source> = state.open.iter().filter(|(_, a)| due(a)).map(|(s, _)| *s).collect();
        let mut out: Vec<Aggregate> = sources.iter().filter_map(|s| state.open.remove(s)).collect();
        if state.other.as_ref().is_some_and(due)
            && let Some(other) = state.other.take()
        {
            out.push(other);
        }
        out.sort_by_key(|a| a.source);
        out
    }

    /// Every aggregate still open (at shutdown).
    pub fn take_all(&self) -> Vec<Aggregate> {
        let mut state = lock(&self.state);
        let mut out: Vec<Aggregate> = state.open.drain().map(|(_, a)| a).collect();
        out.extend(state.other.take());
        out.sort_by_key(|a| a.source);
        out
    }

    /// Refusals since start, by reason code.
    pub fn totals(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.state).totals.iter().map(|(r, n)| (r.code(), *n)).collect()
    }

    /// Refusals since start for one reason.
    pub fn total(&self, reason: Reason) -> u64 {
        lock(&self.state).totals.get(&reason).copied().unwrap_or(0)
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
