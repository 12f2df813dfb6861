//! What a name in berth's zone can mean, from its labels alone (no catalog, no I/O).
//!
//! A few names have two readings: `web.service.berth` is the Consul-style union of every
//! app's `web`, and also service `web` of an app named `service`; `web.shop.service.berth`
//! is service `web` of app `shop`, and also instance `web` of service `shop` of app
//! `service`. [`targets`] returns every reading, the preferred one first; the answer takes the
//! first one that exists in the catalog.

/// A set of instances that a name can stand for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Services {
    /// Service `service` of app `app`: `SERVICE.APP.berth`, `SERVICE.APP.service.berth`.
    One {
        /// The app.
        app: String,
        /// The service.
        service: String,
    },
    /// Every app's service named `service`: `SERVICE.service.berth`.
    AnyApp {
        /// The service.
        service: String,
    },
}

/// One reading of a name under the zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The zone's apex, `berth.`: its SOA.
    Apex,
    /// `APP.berth`: no records, but it exists while one of its services does.
    App(String),
    /// `service.berth`: no records, but it exists while any service does.
    ServiceRoot,
    /// The instances of one or more services: A, AAAA and SRV (main port) records.
    Services(Services),
    /// `_tcp.SERVICE.APP.berth`: no records, but it exists while the service does.
    Tcp(Services),
    /// `_PORT._tcp.SERVICE.APP.berth` (RFC 2782): SRV records with the port named `PORT`.
    Port {
        /// The port's name, without the underscore.
        port: String,
        /// Whose port.
        of: Services,
    },
    /// `LABEL.SERVICE.APP.berth`: one instance, by the label made from its id
    /// ([`instance_label`]).
    Instance {
        /// The instance's label.
        label: String,
        /// Its app.
        app: String,
        /// Its service.
        service: String,
    },
}

/// The label that names an instance in DNS: the first 12 characters of its id, lowercased,
/// with anything but letters, digits, `-` and `_` replaced by `-` (ids are usually DNS-safe
/// already; this keeps a stray character from making an unanswerable name).
pub(crate) fn instance_label(id: &str) -> String {
    id.chars()
        .take(12)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Every reading of a name whose labels under the zone are `labels` (leftmost first,
/// lowercase), the preferred first. An empty list means the name cannot exist in the zone.
pub(crate) fn targets(labels: &[&str]) -> Vec<Target> {
    match labels {
        [] => vec![Target::Apex],
        ["service"] => vec![Target::ServiceRoot, Target::App("service".to_owned())],
        [app] => vec![Target::App((*app).to_owned())],
        ["_tcp", rest @ ..] => services(rest).into_iter().map(Target::Tcp).collect(),
        [port, "_tcp", rest @ ..] => match port.strip_prefix('_') {
            Some(port) if !port.is_empty() => services(rest)
                .into_iter()
                .map(|of| Target::Port {
                    port: port.to_owned(),
                    of,
                })
                .collect(),
            _ => Vec::new(),
        },
        [first, ..] if first.starts_with('_') => Vec::new(),
        _ => {
            let mut targets: Vec<Target> =
                services(labels).into_iter().map(Target::Services).collect();
            if let [label, service, app] = labels {
                targets.push(Target::Instance {
                    label: (*label).to_owned(),
                    app: (*app).to_owned(),
                    service: (*service).to_owned(),
                });
            }
            targets
        }
    }
}

/// The readings of `labels` as a set of services, the preferred first.
fn services(labels: &[&str]) -> Vec<Services> {
    let one = |app: &str, service: &str| Services::One {
        app: app.to_owned(),
        service: service.to_owned(),
    };
    match labels {
        [service, "service"] => vec![
            Services::AnyApp {
                service: (*service).to_owned(),
            },
            one("service", service),
        ],
        [service, app] => vec![one(app, service)],
        [service, app, "service"] => vec![one(app, service)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(app: &str, service: &str) -> Services {
        Services::One {
            app: app.to_owned(),
            service: service.to_owned(),
        }
    }

    fn any(service: &str) -> Services {
        Services::AnyApp {
            service: service.to_owned(),
        }
    }

    #[test]
    fn plain_and_consul_style_service_names() {
        assert_eq!(
            targets(&["web", "shop"]),
            vec![Target::Services(one("shop", "web"))]
        );
        assert_eq!(
            targets(&["web", "shop", "service"]),
            vec![
                Target::Services(one("shop", "web")),
                Target::Instance {
                    label: "web".to_owned(),
                    app: "service".to_owned(),
                    service: "shop".to_owned(),
                },
            ]
        );
        assert_eq!(
            targets(&["web", "service"]),
            vec![
                Target::Services(any("web")),
                Target::Services(one("service", "web"))
            ]
        );
    }

    #[test]
    fn instance_names() {
        assert_eq!(
            targets(&["0123456789ab", "web", "shop"]),
            vec![Target::Instance {
                label: "0123456789ab".to_owned(),
                app: "shop".to_owned(),
                service: "web".to_owned(),
            }]
        );
    }

    #[test]
    fn srv_names_with_a_port_name() {
        assert_eq!(
            targets(&["_http", "_tcp", "web", "shop"]),
            vec![Target::Port {
                port: "http".to_owned(),
                of: one("shop", "web"),
            }]
        );
        assert_eq!(
            targets(&["_admin", "_tcp", "web", "service"]),
            vec![
                Target::Port {
                    port: "admin".to_owned(),
                    of: any("web"),
                },
                Target::Port {
                    port: "admin".to_owned(),
                    of: one("service", "web"),
                },
            ]
        );
        assert_eq!(
            targets(&["_http", "_tcp", "web", "shop", "service"]),
            vec![Target::Port {
                port: "http".to_owned(),
                of: one("shop", "web"),
            }]
        );
        assert_eq!(
            targets(&["_tcp", "web", "shop"]),
            vec![Target::Tcp(one("shop", "web"))]
        );
    }

    #[test]
    fn the_apex_and_the_parents_of_services() {
        assert_eq!(targets(&[]), vec![Target::Apex]);
        assert_eq!(targets(&["shop"]), vec![Target::App("shop".to_owned())]);
        assert_eq!(
            targets(&["service"]),
            vec![Target::ServiceRoot, Target::App("service".to_owned())]
        );
    }

    #[test]
    fn names_that_cannot_exist() {
        for labels in [
            &["a", "b", "c", "d"][..],
            &["_http", "web", "shop"],
            &["_", "_tcp", "web", "shop"],
            &["_http", "_tcp", "shop"],
            &["_http", "_tcp", "x", "web", "shop"],
            &["_udp", "web", "shop"],
        ] {
            assert_eq!(targets(labels), Vec::new(), "{labels:?}");
        }
    }

    #[test]
    fn instance_labels_are_the_first_12_characters_made_dns_safe() {
        assert_eq!(instance_label("0123456789abcdef"), "0123456789ab");
        assert_eq!(instance_label("web-7-a"), "web-7-a");
        assert_eq!(instance_label("Web.7/A"), "web-7-a");
    }
}
