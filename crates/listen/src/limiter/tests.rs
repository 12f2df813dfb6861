#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn peer(client: u8) -> SocketAddr {
    (Ipv4Addr::new(127, 0, 0, client), 40000).into()
}

fn limits(max: usize, per_client: usize) -> Limits {
    Limits {
        max_connections: max,
        max_connections_per_client: per_client,
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
    }
}

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

impl Permit {
    fn is_evicted(&self) -> bool {
        self.inner.conn.evicted.load(Ordering::Acquire)
    }
}

/// Resolves `permit.expired()` if it is due by now, without letting the clock move.
async fn expired_now(permit: &Permit) -> Option<Expiry> {
    tokio::select! {
        biased;
        expiry = permit.expired() => Some(expiry),
        () = std::future::ready(()) => None,
    }
}

#[test]
fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
    let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: Ipv6Addr = "2001:db8:1:2:bbbb::2".parse().unwrap();
    let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(ClientKey::of(a.into()), ClientKey::of(b.into()));
    assert_ne!(ClientKey::of(a.into()), ClientKey::of(c.into()));
    let mapped: Ipv6Addr = "::ffff:127.0.0.2".parse().unwrap();
    assert_eq!(
        ClientKey::of(mapped.into()),
        ClientKey::of(Ipv4Addr::new(127, 0, 0, 2).into())
    );
    assert_eq!(ClientKey::of(a.into()).to_string(), "2001:db8:1:2::/64");
}

#[test]
fn a_full_listener_closes_its_oldest_slow_connection_for_a_newcomer() {
    paused().block_on(async {
        let limiter = Limiter::new("test", limits(3, 3));
        let slow: Vec<Permit> = (1..=3).map(|c| limiter.admit(peer(c)).unwrap()).collect();
        // A connection that sent its request head is not a slow client any more.
        let _request = slow[0].request();
        let newcomer = limiter.admit(peer(9)).unwrap();
        assert!(!slow[0].is_evicted(), "busy connections are kept");
        assert!(slow[1].is_evicted(), "the oldest slow one makes room");
        assert!(!slow[2].is_evicted());
        assert_eq!(expired_now(&slow[1]).await, Some(Expiry::Evicted));
        assert_eq!(limiter.stats().open, 3);
        assert_eq!(limiter.stats().evicted, 1);
        drop(newcomer);
        assert_eq!(limiter.stats().open, 2);
    });
}

#[test]
fn a_listener_full_of_busy_connections_refuses_the_newcomer() {
    paused().block_on(async {
        let limiter = Limiter::new("test", limits(2, 2));
        let a = limiter.admit(peer(1)).unwrap();
        let b = limiter.admit(peer(2)).unwrap();
        let _busy = (a.request(), b.request());
        assert_eq!(limiter.admit(peer(3)).unwrap_err(), Refused::Full);
        assert_eq!(limiter.stats().refused, 1);
        drop(a);
        limiter.admit(peer(3)).unwrap();
    });
}

#[test]
fn idle_keep_alive_connections_make_room_after_a_second_of_silence() {
    paused().block_on(async {
        let limiter = Limiter::new("test", limits(2, 2));
        let a = limiter.admit(peer(1)).unwrap();
        let b = limiter.admit(peer(2)).unwrap();
        drop(a.request());
        let b_request = b.request();
        assert_eq!(
            limiter.admit(peer(3)).unwrap_err(),
            Refused::Full,
            "a connection that just finished a request is not taken away"
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        let c = limiter.admit(peer(3)).unwrap();
        assert!(a.is_evicted() && !b.is_evicted());
        drop(b_request);
        drop(c);
    });
}

#[test]
fn a_client_at_its_cap_loses_its_own_oldest_slow_connection_or_is_refused() {
    paused().block_on(async {
        let limiter = Limiter::new("test", limits(10, 2));
        let other = limiter.admit(peer(1)).unwrap();
        let first = limiter.admit(peer(2)).unwrap();
        let second = limiter.admit(peer(2)).unwrap();
        let third = limiter.admit(peer(2)).unwrap();
        assert!(
            first.is_evicted(),
            "the client's own oldest slow connection"
        );
        assert!(!other.is_evicted(), "other clients are not touched");
        let _busy = (second.request(), third.request());
        assert_eq!(limiter.admit(peer(2)).unwrap_err(), Refused::Client);
        limiter.admit(peer(3)).unwrap();
    });
}

#[test]
fn slow_clients_expire_after_the_header_timeout_and_idle_ones_after_the_idle_timeout() {
    paused().block_on(async {
        let limiter = Limiter::new("test", limits(10, 10));
        let slow = limiter.admit(peer(1)).unwrap();
        tokio::time::advance(Duration::from_millis(4900)).await;
        assert_eq!(expired_now(&slow).await, None);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(expired_now(&slow).await, Some(Expiry::HeaderTimeout));

        let served = limiter.admit(peer(1)).unwrap();
        let request = served.request();
        // A request in flight (a long download, a blocking query) is never idle.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(expired_now(&served).await, None);
        drop(request);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(expired_now(&served).await, None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(expired_now(&served).await, Some(Expiry::IdleTimeout));

        let stats = limiter.stats();
        assert_eq!((stats.header_timeouts, stats.idle_timeouts), (1, 1));
    });
}

#[test]
fn expiry_waits_in_the_background_until_it_is_due() {
    paused().block_on(async {
        let limiter = Limiter::new("test", limits(10, 10));
        let permit = limiter.admit(peer(1)).unwrap();
        let started = Instant::now();
        assert_eq!(permit.expired().await, Expiry::HeaderTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(permit);

        let permit = limiter.admit(peer(1)).unwrap();
        let waiter = {
            let permit = permit.clone();
            tokio::spawn(async move { permit.expired().await })
        };
        tokio::task::yield_now().await;
        // Fill the listener so that the newcomer below has to evict the waiting one.
        let _rest: Vec<_> = (0..9).map(|_| limiter.admit(peer(3)).unwrap()).collect();
        let _newcomer = limiter.admit(peer(4)).unwrap();
        assert_eq!(waiter.await.unwrap(), Expiry::Evicted);
    });
}

#[test]
fn an_out_of_descriptors_listener_sheds_its_oldest_slow_connection() {
    paused().block_on(async {
        let limiter = Limiter::new("test", limits(10, 10));
        assert!(!limiter.shed_one());
        let busy = limiter.admit(peer(1)).unwrap();
        let _request = busy.request();
        let slow = limiter.admit(peer(2)).unwrap();
        assert!(limiter.shed_one());
        assert!(slow.is_evicted() && !busy.is_evicted());
    });
}

/// What the model of the limiter does with one step.
#[derive(Clone, Debug)]
enum Step {
    Admit(u8),
    /// A complete request head on the n-th open connection (modulo), answered at once.
    Request(usize),
    /// A request that starts and stays in flight.
    Start(usize),
    /// The oldest request in flight on the n-th connection ends.
    End(usize),
    /// The n-th connection closes.
    Close(usize),
    /// Time passes (ms).
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..=4).prop_map(Step::Admit),
        2 => any::<usize>().prop_map(Step::Request),
        1 => any::<usize>().prop_map(Step::Start),
        1 => any::<usize>().prop_map(Step::End),
        1 => any::<usize>().prop_map(Step::Close),
        1 => (0u64..2500).prop_map(Step::Wait),
    ]
}

/// One connection as the model sees it, next to the real permit.
struct Modelled {
    client: u8,
    permit: Permit,
    requests: Vec<InFlight>,
    head_seen: bool,
    idle_since: u64,
    evicted: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Against a plain model of the rules (per-client cap first, then the global cap; the
    /// oldest connection without a request head makes room, then the longest idle one after
    /// a second; otherwise refusal), for any sequence of connections, requests, closes and
    /// waits: the limiter admits, evicts and refuses exactly as the model, and never counts
    /// more connections than its caps.
    #[test]
    fn admission_follows_the_rules(
        max in 1usize..6,
        per_client in 1usize..6,
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let per_client = per_client.min(max);
        paused().block_on(async {
            let limiter = Limiter::new("model", limits(max, per_client));
            let started = Instant::now();
            let now = || millis(started.elapsed());
            let mut conns: Vec<Modelled> = Vec::new();
            for step in steps {
                let alive: Vec<usize> = (0..conns.len()).filter(|&i| !conns[i].evicted).collect();
                let pick = |n: usize| (!alive.is_empty()).then(|| alive[n % alive.len()]);
                match step {
                    Step::Admit(client) => {
                        let oldest_slow = |of: Option<u8>| {
                            alive.iter().copied().find(|&i| {
                                !conns[i].head_seen && of.is_none_or(|c| conns[i].client == c)
                            })
                        };
                        let mut expected_victims = Vec::new();
                        let mut expected = Ok(());
                        let of_client = alive.iter().filter(|&&i| conns[i].client == client).count();
                        if of_client >= per_client {
                            match oldest_slow(Some(client)) {
                                Some(victim) => expected_victims.push(victim),
                                None => expected = Err(Refused::Client),
                            }
                        }
                        if expected.is_ok() && alive.len() - expected_victims.len() >= max {
                            let remaining: Vec<usize> = alive
                                .iter()
                                .copied()
                                .filter(|i| !expected_victims.contains(i))
                                .collect();
                            let slow = remaining.iter().copied().find(|&i| !conns[i].head_seen);
                            let idle = remaining
                                .iter()
                                .copied()
                                .filter(|&i| conns[i].head_seen && conns[i].requests.is_empty())
                                .map(|i| (now() - conns[i].idle_since, i))
                                .filter(|(idle, _)| *idle >= 1000)
                                .max_by_key(|(idle, i)| (*idle, std::cmp::Reverse(*i)))
                                .map(|(_, i)| i);
                            match slow.or(idle) {
                                Some(victim) => expected_victims.push(victim),
                                None => expected = Err(Refused::Full),
                            }
                        }
                        let result = limiter.admit(peer(client));
                        match (&result, expected) {
                            (Ok(_), Ok(())) => {}
                            (Err(got), Err(want)) => prop_assert_eq!(*got, want),
                            (got, want) => prop_assert!(false, "admit: got {:?}, model says {:?}", got.as_ref().err(), want),
                        }
                        if result.is_err() {
                            // A refusal evicts nobody, even when the client cap had a victim.
                            expected_victims.clear();
                        }
                        for (i, conn) in conns.iter_mut().enumerate() {
                            if !conn.evicted && conn.permit.is_evicted() {
                                prop_assert!(expected_victims.contains(&i), "connection {} evicted unexpectedly", i);
                                conn.evicted = true;
                                conn.requests.clear();
                            }
                        }
                        for victim in &expected_victims {
                            prop_assert!(conns[*victim].evicted, "connection {} should have been evicted", victim);
                        }
                        if let Ok(permit) = result {
                            conns.push(Modelled {
                                client,
                                permit,
                                requests: Vec::new(),
                                head_seen: false,
                                idle_since: now(),
                                evicted: false,
                            });
                        }
                    }
                    Step::Request(n) => if let Some(i) = pick(n) {
                        drop(conns[i].permit.request());
                        conns[i].head_seen = true;
                        if conns[i].requests.is_empty() {
                            conns[i].idle_since = now();
                        }
                    },
                    Step::Start(n) => if let Some(i) = pick(n) {
                        let request = conns[i].permit.request();
                        conns[i].requests.push(request);
                        conns[i].head_seen = true;
                    },
                    Step::End(n) => if let Some(i) = pick(n) {
                        if !conns[i].requests.is_empty() {
                            conns[i].requests.remove(0);
                            if conns[i].requests.is_empty() {
                                conns[i].idle_since = now();
                            }
                        }
                    },
                    Step::Close(n) => if let Some(i) = pick(n) {
                        conns.remove(i);
                    },
                    Step::Wait(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                }
                let alive: Vec<&Modelled> = conns.iter().filter(|c| !c.evicted).collect();
                prop_assert_eq!(limiter.stats().open, alive.len());
                prop_assert!(alive.len() <= max);
                for client in 1..=4u8 {
                    prop_assert!(alive.iter().filter(|c| c.client == client).count() <= per_client);
                }
            }
            Ok(())
        })?;
    }
}
