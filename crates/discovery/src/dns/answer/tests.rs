#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hickory_proto::rr::RData;

use super::*;
use crate::catalog::{Catalog, Change};

fn endpoint(id: &str, app: &str, service: &str, address: &str) -> Endpoint {
    Endpoint {
        id: id.to_owned(),
        app: app.to_owned(),
        service: service.to_owned(),
        release: 1,
        address: address.parse().unwrap(),
        ports: BTreeMap::from([("http".to_owned(), 8080), ("admin".to_owned(), 9000)]),
        tags: Vec::new(),
        meta: BTreeMap::new(),
        node: "node1".to_owned(),
    }
}

fn zone() -> Zone {
    Zone {
        origin: Name::from_ascii("berth.").unwrap(),
        ttl: 7,
    }
}

/// shop/web on .2 and .3, shop/db on .4, blog/web on .5, and shop/gone, registered and
/// deregistered again.
fn catalog() -> Catalog {
    let catalog = Catalog::new();
    catalog.apply([
        Change::Register(endpoint("aaaaaaaaaaaa1111", "shop", "web", "10.88.0.2")),
        Change::Register(endpoint("bbbbbbbbbbbb2222", "shop", "web", "10.88.0.3")),
        Change::Register(endpoint("cccccccccccc3333", "shop", "db", "10.88.0.4")),
        Change::Register(endpoint("dddddddddddd4444", "blog", "web", "10.88.0.5")),
        Change::Register(endpoint("eeeeeeeeeeee5555", "shop", "gone", "10.88.0.6")),
    ]);
    catalog.deregister("eeeeeeeeeeee5555");
    catalog
}

fn ask(catalog: &Catalog, name: &str, kind: RecordType) -> Answer {
    zone().answer(&catalog.snapshot(), &Name::from_ascii(name).unwrap(), kind)
}

/// The answer's records as sorted text, `name type data`.
fn lines(records: &[Record]) -> Vec<String> {
    let mut lines: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_records_of_a_service_in_both_spellings() {
    let catalog = catalog();
    for name in [
        "web.shop.berth.",
        "web.shop.service.berth.",
        "WEB.Shop.berth.",
    ] {
        let answer = ask(&catalog, name, RecordType::A);
        assert!(answer.exists, "{name}");
        let addresses: Vec<String> = lines(&answer.answers)
            .iter()
            .map(|line| line.rsplit(' ').next().unwrap().to_owned())
            .collect();
        assert_eq!(addresses, vec!["10.88.0.2", "10.88.0.3"], "{name}");
        assert!(answer.answers.iter().all(|r| r.ttl == 7));
        assert!(answer.additionals.is_empty());
    }
}

#[test]
fn a_consul_style_service_name_is_the_union_over_apps() {
    let answer = ask(&catalog(), "web.service.berth.", RecordType::A);
    assert_eq!(
        lines(&answer.answers),
        vec![
            "web.service.berth. A 10.88.0.2",
            "web.service.berth. A 10.88.0.3",
            "web.service.berth. A 10.88.0.5",
        ]
    );
}

#[test]
fn instances_sharing_an_address_give_one_record() {
    let catalog = catalog();
    catalog.register(endpoint("ffffffffffff6666", "shop", "db", "10.88.0.4"));
    let answer = ask(&catalog, "db.shop.berth.", RecordType::A);
    assert_eq!(lines(&answer.answers), vec!["db.shop.berth. A 10.88.0.4"]);
}

#[test]
fn srv_on_a_service_name_gives_main_ports_and_target_addresses() {
    let answer = ask(&catalog(), "web.shop.berth.", RecordType::SRV);
    assert!(answer.exists);
    assert_eq!(
        lines(&answer.answers),
        vec![
            "web.shop.berth. SRV 1 1 8080 aaaaaaaaaaaa.web.shop.berth.",
            "web.shop.berth. SRV 1 1 8080 bbbbbbbbbbbb.web.shop.berth.",
        ]
    );
    assert_eq!(
        lines(&answer.additionals),
        vec![
            "aaaaaaaaaaaa.web.shop.berth. A 10.88.0.2",
            "bbbbbbbbbbbb.web.shop.berth. A 10.88.0.3",
        ]
    );
}

#[test]
fn srv_on_a_port_name_gives_that_port() {
    let catalog = catalog();
    let answer = ask(&catalog, "_admin._tcp.web.shop.berth.", RecordType::SRV);
    assert_eq!(
        lines(&answer.answers),
        vec![
            "_admin._tcp.web.shop.berth. SRV 1 1 9000 aaaaaaaaaaaa.web.shop.berth.",
            "_admin._tcp.web.shop.berth. SRV 1 1 9000 bbbbbbbbbbbb.web.shop.berth.",
        ]
    );
    assert_eq!(answer.additionals.len(), 2);

    let union = ask(&catalog, "_http._tcp.web.service.berth.", RecordType::SRV);
    assert_eq!(union.answers.len(), 3);

    // A port no instance has: the name exists (the service does), with no records.
    let none = ask(&catalog, "_grpc._tcp.web.shop.berth.", RecordType::SRV);
    assert!(none.exists);
    assert!(none.answers.is_empty());
}

#[test]
fn srv_leaves_out_instances_without_a_port() {
    let catalog = Catalog::new();
    let mut portless = endpoint("aaaaaaaaaaaa1111", "shop", "worker", "10.88.0.9");
    portless.ports.clear();
    catalog.register(portless);
    let answer = ask(&catalog, "worker.shop.berth.", RecordType::SRV);
    assert!(answer.exists);
    assert!(answer.answers.is_empty());
    assert_eq!(
        ask(&catalog, "worker.shop.berth.", RecordType::A)
            .answers
            .len(),
        1
    );
}

#[test]
fn instance_names_resolve_while_the_instance_is_registered() {
    let catalog = catalog();
    let answer = ask(&catalog, "aaaaaaaaaaaa.web.shop.berth.", RecordType::A);
    assert!(answer.exists);
    assert_eq!(
        lines(&answer.answers),
        vec!["aaaaaaaaaaaa.web.shop.berth. A 10.88.0.2"]
    );
    // The right label in the wrong service does not exist.
    assert!(!ask(&catalog, "aaaaaaaaaaaa.db.shop.berth.", RecordType::A).exists);
    catalog.deregister("aaaaaaaaaaaa1111");
    assert!(!ask(&catalog, "aaaaaaaaaaaa.web.shop.berth.", RecordType::A).exists);
}

#[test]
fn an_app_named_service_is_still_reachable() {
    let catalog = Catalog::new();
    catalog.register(endpoint("aaaaaaaaaaaa1111", "service", "api", "10.88.0.7"));
    // `api.service.berth` is the union of every app's `api`, which includes this one.
    assert_eq!(
        ask(&catalog, "api.service.berth.", RecordType::A)
            .answers
            .len(),
        1
    );
    // `aaaaaaaaaaaa.api.service.berth` is not a known service `aaaaaaaaaaaa.api`, so it is
    // read as the instance name.
    assert_eq!(
        ask(&catalog, "aaaaaaaaaaaa.api.service.berth.", RecordType::A)
            .answers
            .len(),
        1
    );
}

#[test]
fn known_names_without_data_exist_and_unknown_ones_do_not() {
    let catalog = catalog();
    let exists_empty = |name: &str, kind| {
        let answer = ask(&catalog, name, kind);
        assert!(answer.exists, "{name} {kind}");
        assert!(answer.answers.is_empty(), "{name} {kind}");
    };
    // A service whose instances all left.
    exists_empty("gone.shop.berth.", RecordType::A);
    exists_empty("gone.service.berth.", RecordType::A);
    // IPv4 instances have no AAAA; a service name has no TXT.
    exists_empty("web.shop.berth.", RecordType::AAAA);
    exists_empty("web.shop.berth.", RecordType::TXT);
    // Names above services.
    exists_empty("shop.berth.", RecordType::A);
    exists_empty("service.berth.", RecordType::A);
    exists_empty("_tcp.web.shop.berth.", RecordType::SRV);
    exists_empty("berth.", RecordType::A);

    for name in [
        "nope.shop.berth.",
        "web.nope.berth.",
        "nope.service.berth.",
        "nope.berth.",
        "_http._tcp.nope.shop.berth.",
        "_http._udp.web.shop.berth.",
        "zzzzzzzzzzzz.web.shop.berth.",
        "a.b.c.d.berth.",
    ] {
        let answer = ask(&catalog, name, RecordType::A);
        assert!(!answer.exists, "{name}");
        assert!(answer.answers.is_empty(), "{name}");
    }
}

#[test]
fn aaaa_records_of_ipv6_instances() {
    let catalog = Catalog::new();
    catalog.register(endpoint("aaaaaaaaaaaa1111", "shop", "web", "fd00::2"));
    let answer = ask(&catalog, "web.shop.berth.", RecordType::AAAA);
    assert_eq!(lines(&answer.answers), vec!["web.shop.berth. AAAA fd00::2"]);
    assert!(ask(&catalog, "web.shop.berth.", RecordType::A)
        .answers
        .is_empty());
}

#[test]
fn the_apex_has_the_soa_with_the_ttl_as_minimum() {
    let catalog = catalog();
    let answer = ask(&catalog, "berth.", RecordType::SOA);
    assert_eq!(answer.answers.len(), 1);
    let soa = &answer.answers[0];
    assert_eq!(soa.ttl, 7);
    let RData::SOA(soa) = &soa.data else {
        panic!("not an SOA: {soa:?}");
    };
    assert_eq!(soa.minimum, 7);
    assert_eq!(soa.mname.to_ascii(), "ns.berth.");
    assert_eq!(soa.rname.to_ascii(), "hostmaster.berth.");
    assert_eq!(
        soa.serial,
        (catalog.snapshot().index & u64::from(u32::MAX)) as u32
    );
}
