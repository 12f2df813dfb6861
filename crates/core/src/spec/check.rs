//! Checks that span services: dependency cycles, exclusive volumes against replicas and
//! strategies, routes claimed twice.

use std::collections::BTreeMap;

use super::read::{Problem, Spans};
use super::{ServiceSpec, Strategy};

pub(super) fn app(
    services: &BTreeMap<String, ServiceSpec>,
    spans: &Spans,
    problems: &mut Vec<Problem>,
) {
    let span_of = |path: &str, fallback: &str| {
        spans
            .get(path)
            .or_else(|| spans.get(fallback))
            .cloned()
            .unwrap_or(0..0)
    };
    if let Some(cycle) = dependency_cycle(services) {
        let first = format!("services.{}.depends_on.{}", cycle[0], cycle[1]);
        problems.push(Problem::new(
            span_of(&first, &format!("services.{}", cycle[0])),
            format!("dependency cycle: {}", cycle.join(" -> ")),
            "services start in dependency order, so one of these depends_on entries has to go",
        ));
    }
    let mut routes: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (name, service) in services {
        let here = format!("services.{name}");
        if service.has_exclusive_volume() {
            if service.replicas > 1 {
                problems.push(Problem::new(
                    span_of(&format!("{here}.replicas"), &here),
                    format!("`{name}` has {} replicas but mounts a named volume exclusive to one instance", service.replicas),
                    "use replicas = 1, or set shared = true on the volume if the program handles concurrent writers",
                ));
            }
            let overlapping = match service.deploy.strategy {
                Strategy::BlueGreen(_) => Some("blue_green"),
                Strategy::Canary(_) => Some("canary"),
                Strategy::Rolling(_) => None,
            };
            if let Some(strategy) = overlapping {
                problems.push(Problem::new(
                    span_of(&format!("{here}.deploy.strategy"), &here),
                    format!("strategy = \"{strategy}\" runs old and new instances together, but `{name}` mounts a named volume exclusive to one instance"),
                    "use strategy = \"rolling\" (the old instance stops before the new one starts), or set shared = true on the volume",
                ));
            }
        }
        if let Some(route) = &service.route {
            if let Some(other) = routes.insert((&route.host, &route.path), name) {
                problems.push(Problem::new(
                    span_of(&format!("{here}.route.host"), &here),
                    format!(
                        "`{name}` and `{other}` both route {}{}",
                        route.host, route.path
                    ),
                    "give each service its own host or path",
                ));
            }
        }
    }
}

/// The first dependency cycle found, as `a, b, ..., a`.
fn dependency_cycle(services: &BTreeMap<String, ServiceSpec>) -> Option<Vec<&str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'s>(
        name: &'s str,
        services: &'s BTreeMap<String, ServiceSpec>,
        marks: &mut BTreeMap<&'s str, Mark>,
        stack: &mut Vec<&'s str>,
    ) -> Option<Vec<&'s str>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|entry| *entry == name).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(name);
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        stack.push(name);
        if let Some(service) = services.get(name) {
            for dependency in service.depends_on.keys() {
                if let Some(cycle) = visit(dependency, services, marks, stack) {
                    return Some(cycle);
                }
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    services
        .keys()
        .find_map(|name| visit(name, services, &mut marks, &mut Vec::new()))
}
