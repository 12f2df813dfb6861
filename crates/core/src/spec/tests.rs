use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

/// Every feature of the spec at once: fixtures, not the examples (those must deploy on this
/// machine, so they stay simple; see `every_example_parses`).
const SHOP: &str = include_str!("fixtures/shop-full.toml");
const BLOG: &str = include_str!("fixtures/blog-full.toml");

#[test]
fn every_example_parses() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut parsed = 0;
    for entry in std::fs::read_dir(examples).expect("examples/") {
        let dir = entry.expect("entry").path();
        for file in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = file.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("berth") && name.ends_with(".toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                if let Err(e) = AppSpec::parse_file(&path.display().to_string(), &text, None) {
                    panic!("{e}");
                }
                parsed += 1;
            }
        }
    }
    assert!(
        parsed >= 4,
        "found only {parsed} berth*.toml under {examples}"
    );
}

#[test]
fn shop_example_parses() {
    let spec = AppSpec::parse(SHOP, None).expect("shop parses");
    assert_eq!(spec.app, "shop");
    let web = &spec.services["web"];
    assert_eq!(web.replicas, 3);
    assert_eq!(web.image.registry.as_deref(), Some("registry.local:5000"));
    assert_eq!(web.image.repository.as_str(), "shop/web");
    assert_eq!(web.resources.memory, Some(256 << 20));
    assert_eq!(web.depends_on["db"], DependencyCondition::Healthy);
    assert_eq!(web.stop_grace, Duration::from_secs(20));
    let Strategy::Canary(canary) = &web.deploy.strategy else {
        panic!("web deploys by canary")
    };
    assert_eq!(
        canary.steps,
        [
            CanaryStep::Count(1),
            CanaryStep::Percent(50),
            CanaryStep::Percent(100)
        ]
    );
    assert_eq!(canary.pause, Pause::For(Duration::from_secs(30)));
    assert_eq!(web.tags, ["public"]);
    assert_eq!(web.meta["team"], "storefront");
    let db = &spec.services["db"];
    assert!(db.has_exclusive_volume());
    assert!(!web.has_exclusive_volume());
    assert_eq!(
        db.deploy.strategy,
        Strategy::Rolling(Rolling {
            max_surge: 0,
            max_unavailable: 1,
            ..Rolling::default()
        })
    );
}

#[test]
fn overlays_merge_over_the_base() {
    let staging = AppSpec::parse(SHOP, Some("staging")).expect("staging parses");
    assert_eq!(staging.env.as_deref(), Some("staging"));
    let web = &staging.services["web"];
    assert_eq!(web.replicas, 1);
    let route = web.route.as_ref().expect("route");
    assert_eq!(route.host, "shop.staging.test");
    assert_eq!(route.port, Some(PortRef::Named("http".into())));

    let production = AppSpec::parse(SHOP, Some("production")).expect("production parses");
    let Strategy::Canary(canary) = &production.services["web"].deploy.strategy else {
        panic!("still canary")
    };
    assert_eq!(canary.pause, Pause::Manual);
    assert_eq!(
        canary.steps.len(),
        3,
        "keys the overlay does not name are kept"
    );
}

#[test]
fn blog_example_parses() {
    let spec = AppSpec::parse(BLOG, None).expect("blog parses");
    let app = &spec.services["app"];
    assert!(app.image.digest.is_some());
    assert!(
        !app.has_exclusive_volume(),
        "shared and bind volumes are not exclusive"
    );
    assert_eq!(
        app.volumes["config"],
        VolumeSpec::Bind {
            host: "/srv/blog/config".into(),
            path: "/etc/blog".into(),
            read_only: true
        }
    );
    assert!(
        matches!(app.deploy.strategy, Strategy::BlueGreen(BlueGreen { keep_old, .. }) if keep_old == Duration::from_secs(600))
    );
    assert_eq!(app.secret_files["SESSION_KEY"], "/run/secrets/session_key");
    assert!(app.secrets.is_empty());
    assert_eq!(spec.services["worker"].restart, RestartPolicy::OnFailure);
    assert!(matches!(
        spec.services["worker"]
            .health
            .as_ref()
            .map(|health| &health.check),
        Some(HealthCheck::Exec(_))
    ));
}

#[test]
fn display_names_file_line_column_and_hint() {
    let text = "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nrepliacs = 3\n";
    let errors = AppSpec::parse_file("shop/berth.toml", text, None).expect_err("typo");
    assert_eq!(
        errors.to_string(),
        "shop/berth.toml:4:1: unknown key `repliacs` in services.web\n  hint: did you mean `replicas`?"
    );
}

const WEB: &str = "app = \"shop\"\n[services.web]\nimage = \"web:1\"\n";

/// Each case: the file, then the first error's `line:column: message` and its hint.
const INVALID: &[(&str, &str, &str)] = &[
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nrepliacs = 3\n",
        "4:1: unknown key `repliacs` in services.web",
        "did you mean `replicas`?",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nreplicas = \"three\"\n",
        "4:12: `replicas` in services.web must be an integer, not a string",
        "write it like: replicas = 3",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nstop_grace = \"20 seconds\"\n",
        "4:14: invalid duration `20 seconds` for `stop_grace` in services.web: `20` has no unit (ms, s, m, h or d)",
        "write a number with a unit: 500ms, 2s, 5m, 1h (or combined, like 1m30s)",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = { memory = \"1.5G\" }\n",
        "4:24: invalid size `1.5G` for `memory` in services.web.resources: unknown unit `.5G`: units are B, kB/MB/GB/TB (powers of 1000) and KiB/MiB/GiB/TiB (powers of 1024), the B optional",
        "write a whole number with a unit: 64Mi, 256MiB, 1Gi (powers of 1024) or 500M, 2GB (powers of 1000)",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = { cpus = 0 }\n",
        "4:22: `cpus` in services.web.resources must be at least 0.01 (1% of one core)",
        "write it like: cpus = 0.5, or leave `cpus` out for no CPU limit",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = { cpus = -1 }\n",
        "4:22: `cpus` in services.web.resources must be at least 0.01 (1% of one core)",
        "write it like: cpus = 0.5, or leave `cpus` out for no CPU limit",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = { cpus = 0.001 }\n",
        "4:22: `cpus` in services.web.resources must be at least 0.01 (1% of one core)",
        "write it like: cpus = 0.5, or leave `cpus` out for no CPU limit",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = { memory = \"0\" }\n",
        "4:24: `memory` in services.web.resources is 0 bytes; a container needs at least 6Mi to start",
        "write it like: memory = \"256Mi\", or leave `memory` out for no memory limit",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\n[services.web.resources]\nmemory = \"1Mi\"\n",
        "5:10: `memory` in services.web.resources is 1048576 bytes; a container needs at least 6Mi to start",
        "write it like: memory = \"256Mi\", or leave `memory` out for no memory limit",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = { pids = 0 }\n",
        "4:22: `pids` in services.web.resources must be between 1 and 4194304",
        "write it like: pids = 256",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = { pids = -1 }\n",
        "4:22: `pids` in services.web.resources must be between 1 and 4194304",
        "write it like: pids = 256",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nresources = { pids = 5000000 }\n",
        "4:22: `pids` in services.web.resources must be between 1 and 4194304",
        "write it like: pids = 256",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\ndepends_on = { dbb = \"healthy\" }\n[services.db]\nimage = \"pg:16\"\n",
        "4:16: `web` depends on `dbb`, which is not a service of this app",
        "did you mean `db`?",
    ),
    (
        "app = \"shop\"\n[services.a]\nimage = \"a:1\"\ndepends_on = { b = \"started\" }\n[services.b]\nimage = \"b:1\"\ndepends_on = { c = \"started\" }\n[services.c]\nimage = \"c:1\"\ndepends_on = { a = \"healthy\" }\n",
        "4:16: dependency cycle: a -> b -> c -> a",
        "services start in dependency order, so one of these depends_on entries has to go",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nports = { http = 8080 }\nhealth = { http = { port = \"htp\", path = \"/up\" } }\n",
        "5:28: `port` in services.web.health.http names `htp`, which the service's `ports` does not declare",
        "did you mean `http`?",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\ndeploy = { strategy = \"rolling\", max_surge = 0, max_unavailable = 0 }\n",
        "4:46: max_surge = 0 with max_unavailable = 0: a rolling deploy could never start or stop an instance",
        "allow one extra instance (max_surge = 1) or one missing instance (max_unavailable = 1)",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\n[services.web.deploy]\nstrategy = \"canary\"\nsteps = [\"1\", \"50%\"]\n",
        "6:15: canary steps must end at \"100%\"",
        "add \"100%\" as the last step, so the deploy finishes with every instance on the new release",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\n[services.web.deploy]\nstrategy = \"canary\"\nsteps = [\"50%\", \"10%\", \"100%\"]\n",
        "6:17: canary steps must increase",
        "order the steps from the fewest instances to \"100%\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\n[services.web.deploy]\nstrategy = \"canarie\"\n",
        "5:12: unknown deploy strategy `canarie`",
        "did you mean `canary`?",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\n[services.web.deploy]\nstrategy = \"rolling\"\nsteps = [\"100%\"]\n",
        "6:1: `steps` does not apply to strategy = \"rolling\"",
        "`steps` is a setting of strategy = \"canary\"; remove it or change the strategy",
    ),
    (
        "app = \"shop\"\n[services.db]\nimage = \"pg:16\"\nreplicas = 2\nvolumes = { data = \"/var/lib/pg\" }\n",
        "4:12: `db` has 2 replicas but mounts a named volume exclusive to one instance",
        "use replicas = 1, or set shared = true on the volume if the program handles concurrent writers",
    ),
    (
        "app = \"shop\"\n[services.db]\nimage = \"pg:16\"\nvolumes = { data = \"/var/lib/pg\" }\ndeploy = { strategy = \"blue_green\" }\n",
        "5:23: strategy = \"blue_green\" runs old and new instances together, but `db` mounts a named volume exclusive to one instance",
        "use strategy = \"rolling\" (the old instance stops before the new one starts), or set shared = true on the volume",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web\"\n",
        "3:9: invalid image `web`: no tag or digest",
        "write [registry/]repository:tag or repository@sha256:<64 hex digits>",
    ),
    (
        "app = \"shop\"\n[services.web]\ncommand = [\"/bin/web\"]\n",
        "2:11: service `web` has no `image`",
        "add image = \"registry.local:5000/<app>/<service>:<tag>\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nvolumes = { data = \"var/lib\" }\n",
        "4:20: volume `data` is mounted at `var/lib`, which is not an absolute path",
        "container paths start with `/`",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nrestart = \"sometimes\"\n",
        "4:11: unknown restart policy `sometimes`",
        "use \"always\", \"on-failure\" or \"no\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nports = { http = 8080, admin = 9000 }\nroute = { host = \"shop.test\" }\n",
        "5:9: services.web.route has no `port` and the service declares 2 ports",
        "say which port gets the traffic: port = \"http\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nhealth = { tcp = { port = 80 }, exec = [\"true\"] }\n",
        "4:33: services.web.health has more than one check: tcp, exec",
        "give exactly one of http = {...}, tcp = {...} or exec = [...]",
    ),
    (
        "app = \"Shop!\"\n[services.web]\nimage = \"web:1\"\n",
        "1:7: app name `Shop!` is not a DNS label",
        "use lowercase letters, digits and `-`, starting with a letter (it becomes <service>.<app>.berth)",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\n[env.staging]\nservices.web.replicsa = 1\n",
        "5:14: unknown key `replicsa` in services.web",
        "did you mean `replicas`?",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nenv = { PORT = 8080, \"bad name\" = \"x\" }\n",
        "4:22: `bad name` is not a valid environment variable name",
        "use letters, digits and `_`, not starting with a digit",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\ntags = [\"a b\"]\n",
        "4:8: tag `a b` must be 1 to 128 printable characters without spaces",
        "write tags like: tags = [\"public\", \"v2\"]",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\ntags = [\"x\", \"x\"]\n",
        "4:8: tag `x` is listed twice",
        "list each tag once",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nmeta = { \"a.b\" = \"1\" }\n",
        "4:10: meta key `a.b` must be 1 to 128 letters, digits, `-` or `_`",
        "write it like: meta = { team = \"payments\" }",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nmeta = { team = 3 }\n",
        "4:17: meta `team` must be a string",
        "write it like: team = \"value\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nports = { http = 80 }\nroute = { host = \"a.test\", balance = \"random\" }\n",
        "5:38: unknown balance `random`",
        "use \"least_outstanding\" (the default) or \"round_robin\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\n[services.web.secret_files]\nTLS_KEY = \"run/secrets/tls.key\"\n",
        "5:11: the file of secret `TLS_KEY`, `run/secrets/tls.key`, is not an absolute path",
        "container paths start with `/`, e.g. \"/run/secrets/tls.key\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nsecret_files = { TOKEN = \"/proc/self/token\" }\n",
        "4:26: the file of secret `TOKEN`, `/proc/self/token`, is under /proc, which the container runtime mounts over",
        "put secret files under /run/secrets (or another directory of your own)",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nsecret_files = { TOKEN = \"/run/secrets/../token\" }\n",
        "4:26: the file of secret `TOKEN`, `/run/secrets/../token`, is not a plain path (it has `//`, `.` or `..`)",
        "write the path without `.`, `..` or doubled slashes, e.g. \"/run/secrets/tls.key\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nsecret_files = { TOKEN = { path = \"/run/secrets/token\" } }\n",
        "4:26: the file of secret `TOKEN` must be a container path, not a table",
        "write it like: TOKEN = \"/run/secrets/token\"",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nsecret_files = { \"tls-key\" = \"/run/secrets/tls.key\" }\n",
        "4:18: secret `tls-key` is not a valid secret name",
        "secret names are environment variable names: letters, digits and `_`, not starting with a digit",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nsecret_file = { TOKEN = \"/run/secrets/token\" }\n",
        "4:1: unknown key `secret_file` in services.web",
        "did you mean `secret_files`?",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nsecret_files = { A = \"/run/s/a\", B = \"/run/s/a\" }\n",
        "4:38: secrets `A` and `B` are both put at `/run/s/a`",
        "give each secret file its own path",
    ),
    (
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nvolumes = { data = \"/data\" }\nsecret_files = { TOKEN = \"/data/token\" }\n",
        "5:26: the file of secret `TOKEN`, `/data/token`, overlaps volume `data` at `/data`",
        "put secret files outside named and bind volumes, e.g. under /run/secrets",
    ),
    (
        "app = \"shop\"\n[services.web\nimage = \"web:1\"\n",
        "2:14: unclosed table, expected `]`",
        "this is not valid TOML; see https://toml.io for the syntax",
    ),
];

#[test]
fn invalid_files_point_at_the_problem() {
    let mut failures = Vec::new();
    for (text, expected, hint) in INVALID {
        let outcome = match AppSpec::parse(text, None) {
            Ok(_) => "parsed".to_string(),
            Err(errors) => {
                let first = &errors.0[0];
                format!(
                    "{}:{}: {} / {}",
                    first.line, first.column, first.message, first.hint
                )
            }
        };
        let wanted = format!("{expected} / {hint}");
        if outcome != wanted {
            failures.push(format!(
                "file:\n{text}\n  wanted: {wanted}\n  got:    {outcome}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_error_is_reported_in_file_order() {
    let text =
        "app = \"shop\"\n[services.web]\nimage = \"web:1\"\nrepliacs = 3\nstop_grace = \"soon\"\n";
    let errors = AppSpec::parse(text, None).expect_err("two mistakes");
    let lines: Vec<usize> = errors.0.iter().map(|error| error.line).collect();
    assert_eq!(lines, [4, 5]);
}

#[test]
fn unknown_environment_names_the_defined_ones() {
    let errors = AppSpec::parse(SHOP, Some("prod")).expect_err("no such env");
    assert_eq!(errors.0[0].message, "no environment `prod` in this file");
    assert_eq!(
        errors.0[0].hint,
        "environments defined here: production, staging"
    );
}

#[test]
fn a_broken_overlay_is_reported_whichever_environment_is_deployed() {
    let text = format!("{WEB}[env.staging]\nservices.web.replicas = 1\n[env.production]\nservices.web.replicas = -1\n");
    let errors = AppSpec::parse(&text, Some("staging")).expect_err("production overlay is broken");
    assert_eq!((errors.0[0].line, errors.0[0].column), (7, 25));
}

#[test]
fn secrets_can_be_files_as_well_as_variables() {
    let text = format!(
        "{WEB}secrets = [\"TOKEN\"]\nvolumes = {{ scratch = {{ tmpfs = \"/scratch\" }} }}\n[services.web.secret_files]\nTOKEN = \"/run/secrets/token\"\nTLS_KEY = \"/scratch/tls.key\"\n"
    );
    let spec = AppSpec::parse(&text, None).expect("secret files parse");
    let web = &spec.services["web"];
    assert_eq!(web.secrets, ["TOKEN"]);
    assert_eq!(
        web.secret_files,
        BTreeMap::from([
            ("TLS_KEY".to_owned(), "/scratch/tls.key".to_owned()),
            ("TOKEN".to_owned(), "/run/secrets/token".to_owned()),
        ])
    );
    assert_eq!(
        web.secret_names().into_iter().collect::<Vec<_>>(),
        ["TLS_KEY", "TOKEN"]
    );
}
