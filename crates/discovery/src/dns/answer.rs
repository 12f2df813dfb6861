//! The answer to a question about a name in berth's zone, from one catalog snapshot (pure:
//! no I/O, so that every case is tested without sockets).

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom as _;

use super::name::{instance_label, targets, Services, Target};
use crate::catalog::{service_name, Endpoint, Snapshot};

/// Refresh, retry and expire of the SOA: berth serves no zone transfers, so they only need
/// to be plausible.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

/// berth's zone: its origin and the TTL of everything in it.
#[derive(Clone, Debug)]
pub(crate) struct Zone {
    /// The zone's origin, e.g. `berth.` (fully qualified, lowercase).
    pub(crate) origin: Name,
    /// The TTL of every record, and the SOA's minimum (the TTL of negative answers).
    pub(crate) ttl: u32,
}

/// What the zone says about a name.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Answer {
    /// Whether the name exists (NOERROR, maybe without records) or not (NXDOMAIN).
    pub(crate) exists: bool,
    /// The answer section.
    pub(crate) answers: Vec<Record>,
    /// The additional section: the addresses of SRV targets.
    pub(crate) additionals: Vec<Record>,
}

impl Zone {
    /// Answers a question about `name`, which must be in the zone (see [`Zone::contains`]).
    pub(crate) fn answer(&self, snapshot: &Snapshot, name: &Name, kind: RecordType) -> Answer {
        let relative: Vec<String> = name
            .iter()
            .take(usize::from(
                name.num_labels().saturating_sub(self.origin.num_labels()),
            ))
            .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
            .collect();
        let labels: Vec<&str> = relative.iter().map(String::as_str).collect();
        let Some(target) = targets(&labels)
            .into_iter()
            .find(|target| exists(snapshot, target))
        else {
            return Answer::default();
        };
        let mut answer = Answer {
            exists: true,
            ..Answer::default()
        };
        match &target {
            Target::Apex => {
                if matches!(kind, RecordType::SOA | RecordType::ANY) {
                    answer.answers.push(self.soa(snapshot));
                }
            }
            Target::App(_) | Target::ServiceRoot | Target::Tcp(_) => {}
            Target::Services(services) => {
                let endpoints = endpoints(snapshot, services);
                if kind == RecordType::SRV {
                    self.srv(&mut answer, name, &endpoints, |e| {
                        Some(e.main_port()).filter(|port| *port != 0)
                    });
                } else {
                    answer.answers = self.addresses(name, kind, &endpoints);
                }
            }
            Target::Port { port, of } => {
                if kind == RecordType::SRV {
                    let endpoints = endpoints(snapshot, of);
                    self.srv(&mut answer, name, &endpoints, |e| {
                        e.ports.get(port).copied()
                    });
                }
            }
            Target::Instance {
                label,
                app,
                service,
            } => {
                let endpoints: Vec<&Endpoint> = snapshot
                    .instances(app, service)
                    .into_iter()
                    .filter(|e| instance_label(&e.id) == *label)
                    .collect();
                answer.answers = self.addresses(name, kind, &endpoints);
            }
        }
        // Clients tend to use the first record: a new order each time spreads the load.
        answer.answers.shuffle(&mut rand::rng());
        answer
    }

    /// Whether `name` is in the zone (at or below its origin).
    pub(crate) fn contains(&self, name: &Name) -> bool {
        self.origin.zone_of(name)
    }

    /// The zone's SOA record. Its serial follows the catalog's index (modulo 2^32, which
    /// serial number arithmetic allows).
    pub(crate) fn soa(&self, snapshot: &Snapshot) -> Record {
        let label = |label: &str| {
            Name::from_labels([label.as_bytes()])
                .and_then(|name| name.append_domain(&self.origin))
                .unwrap_or_else(|_| self.origin.clone())
        };
        let serial = (snapshot.index & u64::from(u32::MAX)) as u32;
        let soa = SOA::new(
            label("ns"),
            label("hostmaster"),
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            self.ttl,
        );
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }

    /// The name of one instance: `LABEL.SERVICE.APP.<origin>`.
    pub(crate) fn instance_name(&self, endpoint: &Endpoint) -> Option<Name> {
        let label = instance_label(&endpoint.id);
        Name::from_labels([
            label.as_bytes(),
            endpoint.service.as_bytes(),
            endpoint.app.as_bytes(),
        ])
        .and_then(|name| name.append_domain(&self.origin))
        .ok()
    }

    /// A and AAAA records of `endpoints` under `name`, for a question of type `kind`
    /// (ANY gets both), one per distinct address.
    fn addresses(&self, name: &Name, kind: RecordType, endpoints: &[&Endpoint]) -> Vec<Record> {
        let addresses: BTreeSet<IpAddr> = endpoints.iter().map(|e| e.address).collect();
        addresses
            .into_iter()
            .filter_map(|address| match address {
                IpAddr::V4(v4) if matches!(kind, RecordType::A | RecordType::ANY) => {
                    Some(RData::A(A(v4)))
                }
                IpAddr::V6(v6) if matches!(kind, RecordType::AAAA | RecordType::ANY) => {
                    Some(RData::AAAA(AAAA(v6)))
                }
                _ => None,
            })
            .map(|rdata| Record::from_rdata(name.clone(), self.ttl, rdata))
            .collect()
    }

    /// SRV records of `endpoints` under `name`, with the port that `port` picks (endpoints
    /// without one are left out), and their targets' addresses in the additional section.
    fn srv(
        &self,
        answer: &mut Answer,
        name: &Name,
        endpoints: &[&Endpoint],
        port: impl Fn(&Endpoint) -> Option<u16>,
    ) {
        for endpoint in endpoints {
            let (Some(port), Some(target)) = (port(endpoint), self.instance_name(endpoint)) else {
                continue;
            };
            let srv = SRV::new(1, 1, port, target.clone());
            answer
                .answers
                .push(Record::from_rdata(name.clone(), self.ttl, RData::SRV(srv)));
            answer
                .additionals
                .extend(self.addresses(&target, RecordType::ANY, &[endpoint]));
        }
    }
}

/// Whether a reading of a name exists in the snapshot: a known service (even with no
/// instances now), a registered instance, or a name above them.
fn exists(snapshot: &Snapshot, target: &Target) -> bool {
    match target {
        Target::Apex => true,
        Target::ServiceRoot => snapshot.known_names().next().is_some(),
        Target::App(app) => snapshot
            .known_names()
            .any(|name| split(name).is_some_and(|(_, a)| a == app)),
        Target::Services(services) | Target::Tcp(services) | Target::Port { of: services, .. } => {
            match services {
                Services::One { app, service } => snapshot.knows(&service_name(app, service)),
                Services::AnyApp { service } => snapshot
                    .known_names()
                    .any(|name| split(name).is_some_and(|(s, _)| s == service)),
            }
        }
        Target::Instance {
            label,
            app,
            service,
        } => snapshot
            .instances(app, service)
            .iter()
            .any(|e| instance_label(&e.id) == *label),
    }
}

/// Splits a catalog name `SERVICE.APP` into its service and app (service names are DNS
/// labels, so the first dot separates them).
fn split(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
}

/// The registered instances of a set of services, ordered by id.
fn endpoints<'a>(snapshot: &'a Snapshot, services: &Services) -> Vec<&'a Endpoint> {
    match services {
        Services::One { app, service } => snapshot.instances(app, service),
        Services::AnyApp { service } => snapshot
            .endpoints()
            .filter(|e| e.service == *service)
            .collect(),
    }
}

#[cfg(test)]
mod tests;
