use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;

fn ip(text: &str) -> Source {
    Source::of(text.parse::<IpAddr>().unwrap())
}

#[test]
fn ipv6_sources_are_their_64_and_mapped_ipv4_is_ipv4() {
    assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
    assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
    assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
    assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    assert_eq!(ip("192.0.2.7").to_string(), "192.0.2.7");
}

#[test]
fn one_source_cannot_take_another_sources_place() {
    let limiter = Limiter::new(2, 3);
    let a = ip("127.0.0.2");
    let b = ip("127.0.0.1");
    let a1 = limiter.try_acquire(a).unwrap();
    let _a2 = limiter.try_acquire(a).unwrap();
    assert_eq!(limiter.try_acquire(a).unwrap_err(), Full::Source);
    let _b1 = limiter.try_acquire(b).unwrap();
    assert_eq!(limiter.held(), 3);
    // Everyone together is full now; a third source is told so.
    assert_eq!(limiter.try_acquire(ip("127.0.0.3")).unwrap_err(), Full::Everyone);
    // A source at its share hears about its share first.
    assert_eq!(limiter.try_acquire(a).unwrap_err(), Full::Source);
    drop(a1);
    assert_eq!(limiter.held_by(a), 1);
    assert!(limiter.try_acquire(ip("127.0.0.3")).is_ok());
}

#[test]
fn permits_give_their_place_back_and_sources_are_forgotten() {
    let limiter = Limiter::new(1, 10);
    let a = ip("10.0.0.1");
    for _ in 0..100 {
        let permit = limiter.try_acquire(a).unwrap();
        assert_eq!(limiter.held_by(a), 1);
        drop(permit);
    }
    assert_eq!(limiter.held(), 0);
    assert_eq!(limiter.held_by(a), 0);
    assert!(limiter.inner.held.lock().unwrap().by_source.is_empty());
}

#[test]
fn refusals_are_one_aggregate_per_source_and_interval() {
    let refusals = Refusals::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let a = ip("127.0.0.2");
    let b = ip("127.0.0.3");
    for i in 0..6000u64 {
        refusals.record(a, Reason::RdpBadTicket, t0 + Duration::from_millis(i / 100));
    }
    refusals.record(a, Reason::RdpReplayedTicket, t0);
    refusals.record(b, Reason::SshPreauthTimeout, t0 + Duration::from_secs(30));

    assert!(refusals.take_due(t0 + Duration::from_secs(59)).is_empty(), "nothing before the interval is over");
    let due = refusals.take_due(t0 + Duration::from_secs(60));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].source, Some(a));
    assert_eq!(due[0].total(), 6001);
    assert_eq!(due[0].counts_by_code().get("rdp.bad-ticket"), Some(&6000));
    assert_eq!(due[0].counts_by_code().get("rdp.replayed-ticket"), Some(&1));
    assert!(refusals.take_due(t0 + Duration::from_secs(61)).is_empty(), "handed out once");

    // The next refusal from `a` opens a new interval.
    refusals.record(a, Reason::RdpBadTicket, t0 + Duration::from_secs(61));
    let due = refusals.take_due(t0 + Duration::from_secs(90));
    assert_eq!(due.iter().map(|d| d.source).collect::<Vec<_>>(), vec![Some(b)]);
    let rest = refusals.take_all();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].total(), 1);

    assert_eq!(refusals.total(Reason::RdpBadTicket), 6001);
    assert_eq!(refusals.totals().get("ssh.preauth-timeout"), Some(&1));
}

#[test]
fn many_sources_are_folded_into_one_other_aggregate() {
    let refusals = Refusals::with_capacity(Duration::from_secs(1), 3);
    let t0 = Instant::now();
    for i in 1..=10u8 {
        refusals.record(Source::of(IpAddr::from([10, 0, 0, i])), Reason::SshConnectionsPerSource, t0);
    }
    let all = refusals.take_due(t0 + Duration::from_secs(1));
    assert_eq!(all.len(), 4, "three sources and the rest");
    let other = all.iter().find(|a| a.source.is_none()).expect("an aggregate for other sources");
    assert_eq!(other.total(), 7);
    assert_eq!(refusals.total(Reason::SshConnectionsPerSource), 10);
}
