//! Walks the spanned TOML document into an [`AppSpec`], collecting a [`Problem`] with a span
//! for everything wrong instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::check;
use super::{
    AppSpec, AutoRollback, Balance, BlueGreen, Canary, CanaryStep, DependencyCondition, DeploySpec,
    HealthCheck, HealthSpec, ImageRef, Pause, PortRef, Resources, RestartPolicy, Rolling,
    RouteSpec, ServiceSpec, SpecError, Strategy, VolumeSpec, MAX_PIDS, MIN_CPUS, MIN_MEMORY,
    MIN_PIDS,
};
use berth_units::{parse_duration, parse_size};

type Value<'i> = Spanned<DeValue<'i>>;

/// A problem before it is given a file, line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Problem {
    pub(super) span: Range<usize>,
    pub(super) message: String,
    pub(super) hint: String,
}

impl Problem {
    pub(super) fn new(
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Problem {
            span,
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub(super) fn locate(self, file: &str, text: &str) -> SpecError {
        let offset = self.span.start.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        SpecError {
            file: file.to_string(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message: self.message,
            hint: self.hint,
        }
    }
}

/// Keys allowed in a table, each with an example shown in hints.
type Schema = &'static [(&'static str, &'static str)];

const TOP: Schema = &[
    ("app", "app = \"shop\""),
    ("services", "[services.web]"),
    ("env", "[env.staging]"),
];
const SERVICE: Schema = &[
    ("image", "image = \"registry.local:5000/shop/web:1.0\""),
    ("command", "command = [\"/bin/web\", \"--port\", \"8080\"]"),
    ("env", "env = { RUST_LOG = \"info\" }"),
    ("secrets", "secrets = [\"STRIPE_KEY\"]"),
    (
        "secret_files",
        "secret_files = { TLS_KEY = \"/run/secrets/tls.key\" }",
    ),
    ("replicas", "replicas = 3"),
    (
        "resources",
        "resources = { memory = \"256Mi\", cpus = 0.5, pids = 256 }",
    ),
    ("ports", "ports = { http = 8080 }"),
    (
        "health",
        "health = { http = { port = \"http\", path = \"/up\" } }",
    ),
    ("depends_on", "depends_on = { db = \"healthy\" }"),
    ("restart", "restart = \"on-failure\""),
    ("stop_grace", "stop_grace = \"20s\""),
    ("volumes", "volumes = { data = \"/var/lib/data\" }"),
    (
        "route",
        "route = { host = \"shop.example.test\", port = \"http\" }",
    ),
    ("deploy", "deploy = { strategy = \"rolling\" }"),
    ("tags", "tags = [\"public\", \"v2\"]"),
    ("meta", "meta = { team = \"payments\" }"),
];
const RESOURCES: Schema = &[
    ("memory", "memory = \"256Mi\""),
    ("cpus", "cpus = 0.5"),
    ("pids", "pids = 256"),
];
const HEALTH: Schema = &[
    ("http", "http = { port = \"http\", path = \"/up\" }"),
    ("tcp", "tcp = { port = 5432 }"),
    ("exec", "exec = [\"pg_isready\"]"),
    ("interval", "interval = \"5s\""),
    ("timeout", "timeout = \"2s\""),
    ("healthy_after", "healthy_after = 1"),
    ("unhealthy_after", "unhealthy_after = 3"),
    ("start_period", "start_period = \"10s\""),
];
const HTTP_CHECK: Schema = &[("port", "port = \"http\""), ("path", "path = \"/up\"")];
const TCP_CHECK: Schema = &[("port", "port = 5432")];
const NAMED_VOLUME: Schema = &[
    ("path", "path = \"/var/lib/data\""),
    ("shared", "shared = true"),
    ("read_only", "read_only = true"),
];
const BIND_VOLUME: Schema = &[
    ("bind", "bind = \"/srv/shop/config\""),
    ("path", "path = \"/etc/shop\""),
    ("read_only", "read_only = true"),
];
const TMPFS_VOLUME: Schema = &[("tmpfs", "tmpfs = \"/run\""), ("size", "size = \"64Mi\"")];
const ROUTE: Schema = &[
    ("host", "host = \"shop.example.test\""),
    ("path", "path = \"/\""),
    ("port", "port = \"http\""),
    ("balance", "balance = \"least_outstanding\""),
];
const AUTO_ROLLBACK: Schema = &[
    ("error_rate", "error_rate = 0.02"),
    ("p99", "p99 = \"500ms\""),
    ("watch", "watch = \"2m\""),
    ("window", "window = \"30s\""),
    ("min_requests", "min_requests = 20"),
];
const DEPLOY_COMMON: Schema = &[
    ("strategy", "strategy = \"rolling\""),
    ("auto_rollback", "auto_rollback = { error_rate = 0.02 }"),
    ("keep_warm", "keep_warm = \"5m\""),
];
const ROLLING: Schema = &[
    ("max_surge", "max_surge = 1"),
    ("max_unavailable", "max_unavailable = 0"),
    ("min_healthy_time", "min_healthy_time = \"10s\""),
    ("healthy_deadline", "healthy_deadline = \"5m\""),
];
const BLUE_GREEN: Schema = &[
    ("healthy_deadline", "healthy_deadline = \"5m\""),
    ("keep_old", "keep_old = \"5m\""),
];
const CANARY: Schema = &[
    ("steps", "steps = [\"1\", \"50%\", \"100%\"]"),
    ("pause", "pause = \"30s\""),
    ("min_healthy_time", "min_healthy_time = \"10s\""),
    ("healthy_deadline", "healthy_deadline = \"5m\""),
];
const STRATEGIES: &[(&str, Schema)] = &[
    ("rolling", ROLLING),
    ("blue_green", BLUE_GREEN),
    ("canary", CANARY),
];

/// Parses, merges the overlays and validates; see [`AppSpec::parse_file`].
pub(super) fn parse(text: &str, env: Option<&str>) -> Result<AppSpec, Vec<Problem>> {
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(error) => {
            return Err(vec![Problem::new(
                error.span().unwrap_or(0..0),
                error.message().trim().to_string(),
                "this is not valid TOML; see https://toml.io for the syntax",
            )])
        }
    };
    let mut base = root.into_inner();
    let overlays = base.remove_entry("env");
    let mut problems = Vec::new();
    let mut envs: BTreeMap<String, DeTable<'_>> = BTreeMap::new();
    if let Some((key, value)) = &overlays {
        match value.get_ref() {
            DeValue::Table(table) => {
                for (name, overlay) in table {
                    match overlay.get_ref() {
                        DeValue::Table(overlay) => {
                            envs.insert(name.get_ref().to_string(), overlay.clone());
                        }
                        other => problems.push(Problem::new(
                            overlay.span(),
                            format!("`env.{}` must be a table, not {}", name.get_ref(), article(other)),
                            format!("write it as [env.{}] followed by keys like services.web.replicas = 1", name.get_ref()),
                        )),
                    }
                }
            }
            other => problems.push(Problem::new(
                key.span(),
                format!(
                    "`env` must be a table of environments, not {}",
                    article(other)
                ),
                "write overlays as [env.staging] followed by keys like services.web.replicas = 1",
            )),
        }
    }

    let mut selected = None;
    let base_result = read_app(&base, None);
    for (name, overlay) in &envs {
        let mut merged = base.clone();
        merge(&mut merged, overlay);
        let result = read_app(&merged, Some(name));
        if env == Some(name.as_str()) {
            selected = Some(result);
        } else if let Err(more) = result {
            problems.extend(more);
        }
    }
    let spec = match (env, selected) {
        (None, _) => base_result,
        (Some(_), Some(result)) => {
            if let Err(more) = base_result {
                problems.extend(more);
            }
            result
        }
        (Some(name), None) => {
            let span = overlays.as_ref().map_or(0..0, |(key, _)| key.span());
            let hint = if envs.is_empty() {
                format!("add a [env.{name}] table, or deploy without an environment")
            } else {
                let names: Vec<_> = envs.keys().map(String::as_str).collect();
                format!("environments defined here: {}", names.join(", "))
            };
            problems.push(Problem::new(
                span,
                format!("no environment `{name}` in this file"),
                hint,
            ));
            base_result
        }
    };
    match spec {
        Ok(spec) if problems.is_empty() => Ok(spec),
        Ok(_) => Err(sorted(problems)),
        Err(more) => {
            problems.extend(more);
            Err(sorted(problems))
        }
    }
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by(|a, b| (a.span.start, &a.message).cmp(&(b.span.start, &b.message)));
    problems.dedup();
    problems
}

/// Deep-merges `overlay` over `base`: tables merge key by key, anything else replaces.
fn merge<'i>(base: &mut DeTable<'i>, overlay: &DeTable<'i>) {
    for (key, value) in overlay {
        let both_tables = matches!(
            (
                base.get(key.get_ref().as_ref()).map(Spanned::get_ref),
                value.get_ref()
            ),
            (Some(DeValue::Table(_)), DeValue::Table(_))
        );
        if both_tables {
            if let (Some(existing), DeValue::Table(overlay)) =
                (base.get_mut(key.get_ref().as_ref()), value.get_ref())
            {
                if let DeValue::Table(existing) = existing.get_mut() {
                    merge(existing, overlay);
                }
            }
        } else {
            base.remove(key.get_ref().as_ref());
            base.insert(key.clone(), value.clone());
        }
    }
}

/// What the cross-field checks need to point at: value spans by dotted path.
pub(super) type Spans = BTreeMap<String, Range<usize>>;

struct Reader {
    problems: Vec<Problem>,
    spans: Spans,
}

/// A table being read: its dotted path (for messages) and the keys it allows.
struct Tbl<'a, 'i> {
    path: String,
    table: &'a DeTable<'i>,
    span: Range<usize>,
    schema: &'a [(&'static str, &'static str)],
}

impl<'a, 'i> Tbl<'a, 'i> {
    fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.table.get(key)
    }

    fn key_span(&self, key: &str) -> Range<usize> {
        self.table
            .get_key_value(key)
            .map_or(self.span.clone(), |(key, _)| key.span())
    }

    fn example(&self, key: &str) -> &'static str {
        self.schema
            .iter()
            .find(|(name, _)| *name == key)
            .map_or("", |(_, example)| example)
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn place(&self) -> String {
        if self.path.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {}", self.path)
        }
    }
}

fn article(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The closest candidate within a small edit distance, for "did you mean" hints.
pub(super) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = if word.chars().count() <= 3 { 1 } else { 2 };
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance: Levenshtein plus transpositions, so `repliacs` is one
/// edit from `replicas`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Reader {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem::new(span, message, hint));
    }

    /// Reports every key of `tbl` that its schema does not allow.
    fn unknown_keys(&mut self, tbl: &Tbl<'_, '_>) {
        self.unknown_keys_except(tbl, &[]);
    }

    fn unknown_keys_except(&mut self, tbl: &Tbl<'_, '_>, handled: &[&str]) {
        for key in tbl.table.keys() {
            let name = key.get_ref().as_ref();
            if handled.contains(&name) || tbl.schema.iter().any(|(known, _)| *known == name) {
                continue;
            }
            let known = tbl.schema.iter().map(|(known, _)| *known);
            let hint = match closest(name, known.clone()) {
                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                None => format!(
                    "keys allowed here: {}",
                    known.collect::<Vec<_>>().join(", ")
                ),
            };
            self.problem(
                key.span(),
                format!("unknown key `{name}` {}", tbl.place()),
                hint,
            );
        }
    }

    fn wrong_type(&mut self, tbl: &Tbl<'_, '_>, key: &str, value: &Value<'_>, expected: &str) {
        self.problem(
            value.span(),
            format!(
                "`{key}` {} must be {expected}, not {}",
                tbl.place(),
                article(value.get_ref())
            ),
            format!("write it like: {}", tbl.example(key)),
        );
    }

    /// Looks a key up and remembers where its value is.
    fn value<'a, 'i>(&mut self, tbl: &Tbl<'a, 'i>, key: &str) -> Option<&'a Value<'i>> {
        let value = tbl.get(key)?;
        self.spans.insert(tbl.child(key), value.span());
        Some(value)
    }

    fn table<'a, 'i>(
        &mut self,
        tbl: &Tbl<'a, 'i>,
        key: &str,
        schema: Schema,
    ) -> Option<Tbl<'a, 'i>> {
        let value = self.value(tbl, key)?;
        match value.get_ref() {
            DeValue::Table(table) => Some(Tbl {
                path: tbl.child(key),
                table,
                span: value.span(),
                schema,
            }),
            _ => {
                self.wrong_type(tbl, key, value, "a table");
                None
            }
        }
    }

    fn string(&mut self, tbl: &Tbl<'_, '_>, key: &str) -> Option<String> {
        let value = self.value(tbl, key)?;
        match value.get_ref() {
            DeValue::String(text) => Some(text.to_string()),
            _ => {
                self.wrong_type(tbl, key, value, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, tbl: &Tbl<'_, '_>, key: &str) -> Option<bool> {
        let value = self.value(tbl, key)?;
        match value.get_ref() {
            DeValue::Boolean(flag) => Some(*flag),
            _ => {
                self.wrong_type(tbl, key, value, "true or false");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    fn integer(&mut self, tbl: &Tbl<'_, '_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let value = self.value(tbl, key)?;
        let DeValue::Integer(integer) = value.get_ref() else {
            self.wrong_type(tbl, key, value, "an integer");
            return None;
        };
        match i64::from_str_radix(integer.as_str(), integer.radix()) {
            Ok(number) if (min..=max).contains(&number) => Some(number),
            _ => {
                self.problem(
                    value.span(),
                    format!("`{key}` {} must be between {min} and {max}", tbl.place()),
                    format!("write it like: {}", tbl.example(key)),
                );
                None
            }
        }
    }

    fn count(&mut self, tbl: &Tbl<'_, '_>, key: &str, min: u32) -> Option<u32> {
        let number = self.integer(tbl, key, i64::from(min), i64::from(u32::MAX))?;
        u32::try_from(number).ok()
    }

    fn duration(&mut self, tbl: &Tbl<'_, '_>, key: &str) -> Option<Duration> {
        let text = self.string(tbl, key)?;
        match parse_duration(&text) {
            Ok(duration) => Some(duration),
            Err(reason) => {
                let span = tbl.get(key).map_or(tbl.span.clone(), Spanned::span);
                self.problem(
                    span,
                    format!(
                        "invalid duration `{text}` for `{key}` {}: {reason}",
                        tbl.place()
                    ),
                    "write a number with a unit: 500ms, 2s, 5m, 1h (or combined, like 1m30s)",
                );
                None
            }
        }
    }

    fn size(&mut self, tbl: &Tbl<'_, '_>, key: &str) -> Option<u64> {
        let text = self.string(tbl, key)?;
        match parse_size(&text) {
            Ok(size) => Some(size),
            Err(reason) => {
                let span = tbl.get(key).map_or(tbl.span.clone(), Spanned::span);
                self.problem(
                    span,
                    format!(
                        "invalid size `{text}` for `{key}` {}: {reason}",
                        tbl.place()
                    ),
                    "write a whole number with a unit: 64Mi, 256MiB, 1Gi (powers of 1024) or 500M, 2GB (powers of 1000)",
                );
                None
            }
        }
    }

    /// A non-empty array of strings.
    fn strings(&mut self, tbl: &Tbl<'_, '_>, key: &str) -> Option<Vec<String>> {
        let value = self.value(tbl, key)?;
        let items: Option<Vec<String>> = match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .map(|item| item.get_ref().as_str().map(str::to_string))
                .collect(),
            _ => None,
        };
        match items {
            Some(items) => Some(items),
            None => {
                self.wrong_type(tbl, key, value, "an array of strings");
                None
            }
        }
    }

    fn port_ref(&mut self, tbl: &Tbl<'_, '_>, ports: &BTreeMap<String, u16>) -> Option<PortRef> {
        let value = self.value(tbl, "port")?;
        match value.get_ref() {
            DeValue::String(name) => {
                if !ports.contains_key(name.as_ref()) {
                    let declared: Vec<&str> = ports.keys().map(String::as_str).collect();
                    let hint = match closest(name, declared.iter().copied()) {
                        Some(suggestion) => format!("did you mean `{suggestion}`?"),
                        None if declared.is_empty() => format!(
                            "declare it in the service: ports = {{ {name} = 8080 }}, or use a port number"
                        ),
                        None => format!("declared ports: {}", declared.join(", ")),
                    };
                    self.problem(
                        value.span(),
                        format!("`port` {} names `{name}`, which the service's `ports` does not declare", tbl.place()),
                        hint,
                    );
                    return None;
                }
                Some(PortRef::Named(name.to_string()))
            }
            DeValue::Integer(_) => self
                .integer(tbl, "port", 1, 65535)
                .and_then(|port| u16::try_from(port).ok())
                .map(PortRef::Number),
            _ => {
                self.wrong_type(tbl, "port", value, "a port name or number");
                None
            }
        }
    }
}

fn read_app(root: &DeTable<'_>, env: Option<&str>) -> Result<AppSpec, Vec<Problem>> {
    let mut r = Reader {
        problems: Vec::new(),
        spans: Spans::new(),
    };
    let top = Tbl {
        path: String::new(),
        table: root,
        span: 0..0,
        schema: TOP,
    };
    r.unknown_keys_except(&top, &["env"]);
    let app = r.string(&top, "app");
    match &app {
        None if top.get("app").is_none() => {
            r.problem(0..0, "missing `app`", "name the app on the first line: app = \"shop\"")
        }
        Some(name) if !is_dns_label(name) => r.problem(
            top.get("app").map_or(0..0, Spanned::span),
            format!("app name `{name}` is not a DNS label"),
            "use lowercase letters, digits and `-`, starting with a letter (it becomes <service>.<app>.berth)",
        ),
        _ => {}
    }
    let mut services = BTreeMap::new();
    if let Some(table) = r.table(&top, "services", &[]) {
        let names: BTreeSet<&str> = table
            .table
            .keys()
            .map(|key| key.get_ref().as_ref())
            .collect();
        for (key, value) in table.table {
            let name = key.get_ref().as_ref();
            r.spans.insert(format!("services.{name}"), key.span());
            if !is_dns_label(name) {
                r.problem(
                    key.span(),
                    format!("service name `{name}` is not a DNS label"),
                    "use lowercase letters, digits and `-`, starting with a letter (it becomes <service>.<app>.berth)",
                );
            }
            let DeValue::Table(body) = value.get_ref() else {
                r.problem(
                    value.span(),
                    format!(
                        "service `{name}` must be a table, not {}",
                        article(value.get_ref())
                    ),
                    format!("write it as [services.{name}] followed by its keys"),
                );
                continue;
            };
            let service = Tbl {
                path: format!("services.{name}"),
                table: body,
                span: key.span(),
                schema: SERVICE,
            };
            if let Some(spec) = read_service(&mut r, name, &service, &names) {
                services.insert(name.to_string(), spec);
            }
        }
    } else if top.get("services").is_none() {
        r.problem(
            0..0,
            "no services",
            "add one: [services.web] with image = \"...\"",
        );
    }
    if r.problems.is_empty() {
        check::app(&services, &r.spans, &mut r.problems);
    }
    match app {
        Some(app) if r.problems.is_empty() => Ok(AppSpec {
            app,
            env: env.map(str::to_string),
            services,
        }),
        _ => Err(r.problems),
    }
}

fn read_service(
    r: &mut Reader,
    name: &str,
    s: &Tbl<'_, '_>,
    services: &BTreeSet<&str>,
) -> Option<ServiceSpec> {
    let before = r.problems.len();
    r.unknown_keys(s);
    let image = match r.string(s, "image") {
        Some(text) => match parse_image(&text) {
            Ok(image) => Some(image),
            Err(reason) => {
                let span = s.get("image").map_or(s.span.clone(), Spanned::span);
                r.problem(
                    span,
                    format!("invalid image `{text}`: {reason}"),
                    "write [registry/]repository:tag or repository@sha256:<64 hex digits>",
                );
                None
            }
        },
        None => {
            if s.get("image").is_none() {
                r.problem(
                    s.span.clone(),
                    format!("service `{name}` has no `image`"),
                    "add image = \"registry.local:5000/<app>/<service>:<tag>\"",
                );
            }
            None
        }
    };
    let command = r.strings(s, "command");
    if command.as_ref().is_some_and(Vec::is_empty) {
        r.problem(
            s.get("command").map_or(s.span.clone(), Spanned::span),
            "`command` is empty",
            "remove `command` to run the image's own, or give the program: command = [\"/bin/web\"]",
        );
    }
    let env = read_env(r, s);
    let secrets = read_secrets(r, s, &env);
    let secret_files = read_secret_files(r, s);
    let replicas = r.count(s, "replicas", 0).unwrap_or(1);
    let resources = read_resources(r, s);
    let ports = read_ports(r, s);
    let health = read_health(r, s, &ports);
    let depends_on = read_depends_on(r, name, s, services);
    let restart = match r.string(s, "restart").as_deref() {
        None | Some("always") => RestartPolicy::Always,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("no") => RestartPolicy::No,
        Some(other) => {
            r.problem(
                s.get("restart").map_or(s.span.clone(), Spanned::span),
                format!("unknown restart policy `{other}`"),
                "use \"always\", \"on-failure\" or \"no\"",
            );
            RestartPolicy::Always
        }
    };
    let stop_grace = r
        .duration(s, "stop_grace")
        .unwrap_or(Duration::from_secs(10));
    let volumes = read_volumes(r, s);
    check_secret_files_against_volumes(r, s, &secret_files, &volumes);
    let route = read_route(r, s, &ports);
    let deploy = read_deploy(r, s);
    let tags = read_tags(r, s);
    let meta = read_meta(r, s);
    if r.problems.len() > before {
        return None;
    }
    Some(ServiceSpec {
        image: image?,
        command,
        env,
        secrets,
        secret_files,
        replicas,
        resources,
        ports,
        health,
        depends_on,
        restart,
        stop_grace,
        volumes,
        route,
        deploy,
        tags,
        meta,
    })
}

fn parse_image(text: &str) -> Result<ImageRef, String> {
    let (name, digest) = match text.split_once('@') {
        Some((name, digest)) => (
            name,
            Some(
                digest
                    .parse()
                    .map_err(|error| format!("bad digest: {error}"))?,
            ),
        ),
        None => (text, None),
    };
    let (name, tag) = match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (
            repository,
            Some(tag.parse().map_err(|error| format!("bad tag: {error}"))?),
        ),
        _ => (name, None),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            (Some(host.to_string()), rest)
        }
        _ => (None, name),
    };
    if tag.is_none() && digest.is_none() {
        return Err("no tag or digest".into());
    }
    Ok(ImageRef {
        registry,
        repository: repository
            .parse()
            .map_err(|error| format!("bad repository: {error}"))?,
        tag,
        digest,
    })
}

fn read_env(r: &mut Reader, s: &Tbl<'_, '_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(table) = r.table(s, "env", &[]) else {
        return env;
    };
    for (key, value) in table.table {
        let name = key.get_ref().as_ref();
        if !is_env_name(name) {
            r.problem(
                key.span(),
                format!("`{name}` is not a valid environment variable name"),
                "use letters, digits and `_`, not starting with a digit",
            );
        }
        let text = match value.get_ref() {
            DeValue::String(text) => text.to_string(),
            DeValue::Integer(integer) => integer.as_str().to_string(),
            DeValue::Float(float) => float.as_str().to_string(),
            DeValue::Boolean(flag) => flag.to_string(),
            other => {
                r.problem(
                    value.span(),
                    format!(
                        "environment variable `{name}` must be a string, not {}",
                        article(other)
                    ),
                    format!("write it like: {name} = \"value\""),
                );
                continue;
            }
        };
        env.insert(name.to_string(), text);
    }
    env
}

fn read_secrets(r: &mut Reader, s: &Tbl<'_, '_>, env: &BTreeMap<String, String>) -> Vec<String> {
    let Some(secrets) = r.strings(s, "secrets") else {
        return Vec::new();
    };
    let span = s.get("secrets").map_or(s.span.clone(), Spanned::span);
    let mut seen = BTreeSet::new();
    for secret in &secrets {
        if !is_env_name(secret) {
            r.problem(
                span.clone(),
                format!("secret `{secret}` is not a valid environment variable name"),
                "use letters, digits and `_`, not starting with a digit",
            );
        } else if env.contains_key(secret) {
            r.problem(
                span.clone(),
                format!("`{secret}` is both in `env` and in `secrets`"),
                "keep it in one place: secrets for values that must not be in this file",
            );
        } else if !seen.insert(secret) {
            r.problem(
                span.clone(),
                format!("secret `{secret}` is listed twice"),
                "list each secret once",
            );
        }
    }
    secrets
}

/// Catalog tags: short printable words, each once.
fn read_tags(r: &mut Reader, s: &Tbl<'_, '_>) -> Vec<String> {
    let Some(tags) = r.strings(s, "tags") else {
        return Vec::new();
    };
    let span = s.get("tags").map_or(s.span.clone(), Spanned::span);
    let mut seen = BTreeSet::new();
    for tag in &tags {
        if tag.is_empty() || tag.len() > 128 || !tag.chars().all(|c| c.is_ascii_graphic()) {
            r.problem(
                span.clone(),
                format!("tag `{tag}` must be 1 to 128 printable characters without spaces"),
                "write tags like: tags = [\"public\", \"v2\"]",
            );
        } else if !seen.insert(tag) {
            r.problem(
                span.clone(),
                format!("tag `{tag}` is listed twice"),
                "list each tag once",
            );
        }
    }
    tags
}

/// Catalog metadata: string values under keys like Consul's (letters, digits, `-`, `_`).
fn read_meta(r: &mut Reader, s: &Tbl<'_, '_>) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    let Some(table) = r.table(s, "meta", &[]) else {
        return meta;
    };
    for (key, value) in table.table {
        let name = key.get_ref().as_ref();
        if name.is_empty()
            || name.len() > 128
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            r.problem(
                key.span(),
                format!("meta key `{name}` must be 1 to 128 letters, digits, `-` or `_`"),
                "write it like: meta = { team = \"payments\" }",
            );
            continue;
        }
        match value.get_ref().as_str() {
            Some(text) => {
                meta.insert(name.to_string(), text.to_string());
            }
            None => r.problem(
                value.span(),
                format!("meta `{name}` must be a string"),
                format!("write it like: {name} = \"value\""),
            ),
        }
    }
    meta
}

/// Container directories a secret file may not be put under: the kernel's (`/proc`, `/sys`,
/// `/dev` are mounted over by the runtime) and the root itself.
const KERNEL_DIRS: &[&str] = &["/proc", "/sys", "/dev"];

/// What is wrong with `path` as the container path of a secret file, if anything.
fn secret_file_path_problem(path: &str) -> Option<(String, &'static str)> {
    if !path.starts_with('/') {
        return Some((
            "is not an absolute path".into(),
            "container paths start with `/`, e.g. \"/run/secrets/tls.key\"",
        ));
    }
    if path.ends_with('/') {
        return Some((
            "ends with `/`".into(),
            "name the file, not its directory: \"/run/secrets/tls.key\"",
        ));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts.iter().any(|part| matches!(*part, "" | "." | "..")) {
        return Some((
            "is not a plain path (it has `//`, `.` or `..`)".into(),
            "write the path without `.`, `..` or doubled slashes, e.g. \"/run/secrets/tls.key\"",
        ));
    }
    if let Some(dir) = KERNEL_DIRS
        .iter()
        .find(|dir| path == **dir || path.starts_with(&format!("{dir}/")))
    {
        return Some((
            format!("is under {dir}, which the container runtime mounts over"),
            "put secret files under /run/secrets (or another directory of your own)",
        ));
    }
    None
}

fn read_secret_files(r: &mut Reader, s: &Tbl<'_, '_>) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let Some(table) = r.table(s, "secret_files", &[]) else {
        return files;
    };
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in table.table {
        let name = key.get_ref().as_ref();
        if !is_env_name(name) {
            r.problem(
                key.span(),
                format!("secret `{name}` is not a valid secret name"),
                "secret names are environment variable names: letters, digits and `_`, not starting with a digit",
            );
            continue;
        }
        let DeValue::String(path) = value.get_ref() else {
            r.problem(
                value.span(),
                format!(
                    "the file of secret `{name}` must be a container path, not {}",
                    article(value.get_ref())
                ),
                format!(
                    "write it like: {name} = \"/run/secrets/{}\"",
                    name.to_lowercase()
                ),
            );
            continue;
        };
        if let Some((problem, hint)) = secret_file_path_problem(path) {
            r.problem(
                value.span(),
                format!("the file of secret `{name}`, `{path}`, {problem}"),
                hint,
            );
            continue;
        }
        let clash = paths.iter().find(|(other, _)| {
            *other == path.as_ref()
                || other.starts_with(&format!("{path}/"))
                || path.starts_with(&format!("{other}/"))
        });
        if let Some((other_path, other)) = clash {
            let message = if other_path == path.as_ref() {
                format!("secrets `{other}` and `{name}` are both put at `{path}`")
            } else {
                format!("the files of secrets `{other}` (`{other_path}`) and `{name}` (`{path}`) are one inside the other")
            };
            r.problem(value.span(), message, "give each secret file its own path");
            continue;
        }
        paths.insert(path.to_string(), name.to_string());
        files.insert(name.to_string(), path.to_string());
    }
    files
}

/// A secret file may not be a volume's mount point nor lie inside a named or bind volume
/// (its mount point would be created in the volume's directory on the node).
fn check_secret_files_against_volumes(
    r: &mut Reader,
    s: &Tbl<'_, '_>,
    files: &BTreeMap<String, String>,
    volumes: &BTreeMap<String, VolumeSpec>,
) {
    for (name, path) in files {
        for (volume, spec) in volumes {
            let (mount, persistent) = match spec {
                VolumeSpec::Named { path, .. } | VolumeSpec::Bind { path, .. } => (path, true),
                VolumeSpec::Tmpfs { path, .. } => (path, false),
            };
            let inside = path.starts_with(&format!("{}/", mount.trim_end_matches('/')));
            if path == mount || (inside && persistent) || mount.starts_with(&format!("{path}/")) {
                let span = s
                    .get("secret_files")
                    .and_then(|v| v.get_ref().as_table())
                    .and_then(|t| t.get(name.as_str()))
                    .map_or(s.span.clone(), Spanned::span);
                r.problem(
                    span,
                    format!("the file of secret `{name}`, `{path}`, overlaps volume `{volume}` at `{mount}`"),
                    "put secret files outside named and bind volumes, e.g. under /run/secrets",
                );
            }
        }
    }
}

fn read_resources(r: &mut Reader, s: &Tbl<'_, '_>) -> Resources {
    let Some(table) = r.table(s, "resources", RESOURCES) else {
        return Resources::default();
    };
    r.unknown_keys(&table);
    let cpus = match r.value(&table, "cpus") {
        None => None,
        Some(value) => {
            let cpus = match value.get_ref() {
                DeValue::Float(float) => float.as_str().replace('_', "").parse::<f64>().ok(),
                DeValue::Integer(integer) => integer.as_str().replace('_', "").parse::<f64>().ok(),
                _ => {
                    r.wrong_type(&table, "cpus", value, "a number");
                    return Resources::default();
                }
            };
            match cpus {
                Some(cpus) if cpus.is_finite() && cpus >= MIN_CPUS => Some(cpus),
                _ => {
                    r.problem(
                        value.span(),
                        format!(
                            "`cpus` {} must be at least 0.01 (1% of one core)",
                            table.place()
                        ),
                        "write it like: cpus = 0.5, or leave `cpus` out for no CPU limit",
                    );
                    None
                }
            }
        }
    };
    let memory = r.size(&table, "memory");
    if let Some(small) = memory.filter(|m| *m < MIN_MEMORY) {
        let span = table
            .get("memory")
            .map_or(table.span.clone(), Spanned::span);
        r.problem(
            span,
            format!(
                "`memory` {} is {small} bytes; a container needs at least 6Mi to start",
                table.place()
            ),
            "write it like: memory = \"256Mi\", or leave `memory` out for no memory limit",
        );
    }
    let pids = r
        .integer(&table, "pids", MIN_PIDS, MAX_PIDS)
        .and_then(|pids| u32::try_from(pids).ok());
    Resources {
        memory: memory.filter(|m| *m >= MIN_MEMORY),
        cpus,
        pids,
    }
}

fn read_ports(r: &mut Reader, s: &Tbl<'_, '_>) -> BTreeMap<String, u16> {
    let mut ports = BTreeMap::new();
    let Some(table) = r.table(s, "ports", &[]) else {
        return ports;
    };
    for (key, value) in table.table {
        let name = key.get_ref().as_ref();
        if !is_dns_label(name) {
            r.problem(
                key.span(),
                format!("port name `{name}` is not a DNS label"),
                "use lowercase letters, digits and `-` (it names an SRV record)",
            );
        }
        let port = match value.get_ref() {
            DeValue::Integer(integer) => i64::from_str_radix(integer.as_str(), integer.radix())
                .ok()
                .and_then(|port| u16::try_from(port).ok())
                .filter(|port| *port > 0),
            _ => None,
        };
        match port {
            Some(port) => {
                ports.insert(name.to_string(), port);
            }
            None => r.problem(
                value.span(),
                format!("port `{name}` must be a number from 1 to 65535"),
                format!("write it like: {name} = 8080"),
            ),
        }
    }
    ports
}

fn read_health(
    r: &mut Reader,
    s: &Tbl<'_, '_>,
    ports: &BTreeMap<String, u16>,
) -> Option<HealthSpec> {
    let table = r.table(s, "health", HEALTH)?;
    r.unknown_keys(&table);
    let kinds: Vec<&str> = ["http", "tcp", "exec"]
        .into_iter()
        .filter(|kind| table.get(kind).is_some())
        .collect();
    if kinds.len() != 1 {
        let message = if kinds.is_empty() {
            format!("{} has no check", table.path)
        } else {
            format!(
                "{} has more than one check: {}",
                table.path,
                kinds.join(", ")
            )
        };
        let span = kinds
            .get(1)
            .map_or(table.span.clone(), |kind| table.key_span(kind));
        r.problem(
            span,
            message,
            "give exactly one of http = {...}, tcp = {...} or exec = [...]",
        );
        return None;
    }
    let check = match kinds[0] {
        "http" => {
            let http = r.table(&table, "http", HTTP_CHECK)?;
            r.unknown_keys(&http);
            let path = r.string(&http, "path").unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/') {
                r.problem(
                    http.get("path").map_or(http.span.clone(), Spanned::span),
                    format!("health check path `{path}` does not start with `/`"),
                    format!("write path = \"/{path}\""),
                );
            }
            HealthCheck::Http {
                port: required_port(r, &http, ports)?,
                path,
            }
        }
        "tcp" => {
            let tcp = r.table(&table, "tcp", TCP_CHECK)?;
            r.unknown_keys(&tcp);
            HealthCheck::Tcp {
                port: required_port(r, &tcp, ports)?,
            }
        }
        _ => {
            let command = r.strings(&table, "exec")?;
            if command.is_empty() {
                r.problem(
                    table.key_span("exec"),
                    "`exec` health check is empty",
                    "give a command: exec = [\"pg_isready\"]",
                );
            }
            HealthCheck::Exec(command)
        }
    };
    Some(HealthSpec {
        check,
        interval: r
            .duration(&table, "interval")
            .unwrap_or(Duration::from_secs(5)),
        timeout: r
            .duration(&table, "timeout")
            .unwrap_or(Duration::from_secs(2)),
        healthy_after: r.count(&table, "healthy_after", 1).unwrap_or(1),
        unhealthy_after: r.count(&table, "unhealthy_after", 1).unwrap_or(3),
        start_period: r.duration(&table, "start_period").unwrap_or(Duration::ZERO),
    })
}

fn required_port(
    r: &mut Reader,
    tbl: &Tbl<'_, '_>,
    ports: &BTreeMap<String, u16>,
) -> Option<PortRef> {
    if tbl.get("port").is_none() {
        r.problem(
            tbl.span.clone(),
            format!("{} has no `port`", tbl.path),
            format!("add {}", tbl.example("port")),
        );
        return None;
    }
    r.port_ref(tbl, ports)
}

fn read_depends_on(
    r: &mut Reader,
    name: &str,
    s: &Tbl<'_, '_>,
    services: &BTreeSet<&str>,
) -> BTreeMap<String, DependencyCondition> {
    let mut depends_on = BTreeMap::new();
    let Some(table) = r.table(s, "depends_on", &[]) else {
        return depends_on;
    };
    for (key, value) in table.table {
        let dependency = key.get_ref().as_ref();
        r.spans.insert(
            format!("services.{name}.depends_on.{dependency}"),
            key.span(),
        );
        if dependency == name {
            r.problem(
                key.span(),
                format!("service `{name}` depends on itself"),
                "remove this entry",
            );
            continue;
        }
        if !services.contains(dependency) {
            let hint = match closest(dependency, services.iter().copied()) {
                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                None => format!(
                    "services in this app: {}",
                    services.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            };
            r.problem(
                key.span(),
                format!("`{name}` depends on `{dependency}`, which is not a service of this app"),
                hint,
            );
            continue;
        }
        let condition = match value.get_ref().as_str() {
            Some("healthy") => DependencyCondition::Healthy,
            Some("started") => DependencyCondition::Started,
            _ => {
                r.problem(
                    value.span(),
                    format!(
                        "the condition for `{dependency}` in {} must be \"healthy\" or \"started\"",
                        table.path
                    ),
                    format!("write it like: {dependency} = \"healthy\""),
                );
                continue;
            }
        };
        depends_on.insert(dependency.to_string(), condition);
    }
    depends_on
}

fn read_volumes(r: &mut Reader, s: &Tbl<'_, '_>) -> BTreeMap<String, VolumeSpec> {
    let mut volumes = BTreeMap::new();
    let Some(table) = r.table(s, "volumes", &[]) else {
        return volumes;
    };
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in table.table {
        let name = key.get_ref().as_ref();
        if !is_dns_label(name) {
            r.problem(
                key.span(),
                format!("volume name `{name}` is not a DNS label"),
                "use lowercase letters, digits and `-`, starting with a letter",
            );
        }
        let volume = match value.get_ref() {
            DeValue::String(path) => Some(VolumeSpec::Named {
                path: path.to_string(),
                shared: false,
                read_only: false,
            }),
            DeValue::Table(body) => {
                let (schema, form) = if body.contains_key("bind") {
                    (BIND_VOLUME, "bind")
                } else if body.contains_key("tmpfs") {
                    (TMPFS_VOLUME, "tmpfs")
                } else {
                    (NAMED_VOLUME, "named")
                };
                let volume = Tbl {
                    path: table.child(name),
                    table: body,
                    span: value.span(),
                    schema,
                };
                read_volume(r, &volume, form)
            }
            other => {
                r.problem(
                    value.span(),
                    format!(
                        "volume `{name}` must be a container path or a table, not {}",
                        article(other)
                    ),
                    format!("write it like: {name} = \"/var/lib/data\""),
                );
                None
            }
        };
        let Some(volume) = volume else { continue };
        let path = match &volume {
            VolumeSpec::Named { path, .. }
            | VolumeSpec::Bind { path, .. }
            | VolumeSpec::Tmpfs { path, .. } => path,
        };
        if !path.starts_with('/') {
            r.problem(
                value.span(),
                format!("volume `{name}` is mounted at `{path}`, which is not an absolute path"),
                "container paths start with `/`",
            );
        } else if let Some(other) = paths.insert(path.clone(), name.to_string()) {
            r.problem(
                value.span(),
                format!("volumes `{other}` and `{name}` are both mounted at `{path}`"),
                "mount each volume at its own path",
            );
        }
        volumes.insert(name.to_string(), volume);
    }
    volumes
}

fn read_volume(r: &mut Reader, v: &Tbl<'_, '_>, form: &str) -> Option<VolumeSpec> {
    r.unknown_keys(v);
    match form {
        "bind" => {
            let host = r.string(v, "bind")?;
            if !host.starts_with('/') {
                r.problem(
                    v.get("bind").map_or(v.span.clone(), Spanned::span),
                    format!("bind mount source `{host}` is not an absolute path"),
                    "give the directory on the node from `/`",
                );
            }
            let Some(path) = r.string(v, "path") else {
                r.problem(
                    v.span.clone(),
                    format!("bind mount {} has no `path`", v.path),
                    "add the container path: path = \"/etc/shop\"",
                );
                return None;
            };
            Some(VolumeSpec::Bind {
                host,
                path,
                read_only: r.boolean(v, "read_only").unwrap_or(false),
            })
        }
        "tmpfs" => Some(VolumeSpec::Tmpfs {
            path: r.string(v, "tmpfs")?,
            size: r.size(v, "size"),
        }),
        _ => {
            let Some(path) = r.string(v, "path") else {
                r.problem(
                    v.span.clone(),
                    format!("volume {} has no `path`", v.path),
                    "add the container path (path = \"/var/lib/data\"), or use bind = \"...\" or tmpfs = \"...\"",
                );
                return None;
            };
            Some(VolumeSpec::Named {
                path,
                shared: r.boolean(v, "shared").unwrap_or(false),
                read_only: r.boolean(v, "read_only").unwrap_or(false),
            })
        }
    }
}

fn read_route(r: &mut Reader, s: &Tbl<'_, '_>, ports: &BTreeMap<String, u16>) -> Option<RouteSpec> {
    let table = r.table(s, "route", ROUTE)?;
    r.unknown_keys(&table);
    let Some(host) = r.string(&table, "host") else {
        if table.get("host").is_none() {
            r.problem(
                table.span.clone(),
                format!("{} has no `host`", table.path),
                "add host = \"shop.example.test\"",
            );
        }
        return None;
    };
    let path = r.string(&table, "path").unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') {
        r.problem(
            table.get("path").map_or(table.span.clone(), Spanned::span),
            format!("route path `{path}` does not start with `/`"),
            format!("write path = \"/{path}\""),
        );
    }
    let port = match table.get("port") {
        Some(_) => Some(r.port_ref(&table, ports)?),
        None if ports.len() == 1 => None,
        None => {
            r.problem(
                table.span.clone(),
                format!(
                    "{} has no `port` and the service declares {} ports",
                    table.path,
                    ports.len()
                ),
                "say which port gets the traffic: port = \"http\"",
            );
            return None;
        }
    };
    let balance = match r.string(&table, "balance").as_deref() {
        None | Some("least_outstanding") => Balance::LeastOutstanding,
        Some("round_robin") => Balance::RoundRobin,
        Some(other) => {
            r.problem(
                table
                    .get("balance")
                    .map_or(table.span.clone(), Spanned::span),
                format!("unknown balance `{other}`"),
                "use \"least_outstanding\" (the default) or \"round_robin\"",
            );
            Balance::LeastOutstanding
        }
    };
    Some(RouteSpec {
        host,
        path,
        port,
        balance,
    })
}

fn read_deploy(r: &mut Reader, s: &Tbl<'_, '_>) -> DeploySpec {
    let Some(table) = r.table(s, "deploy", DEPLOY_COMMON) else {
        return DeploySpec::default();
    };
    let strategy = r
        .string(&table, "strategy")
        .unwrap_or_else(|| "rolling".to_string());
    let Some((_, schema)) = STRATEGIES.iter().find(|(name, _)| *name == strategy) else {
        r.problem(
            table
                .get("strategy")
                .map_or(table.span.clone(), Spanned::span),
            format!("unknown deploy strategy `{strategy}`"),
            match closest(&strategy, STRATEGIES.iter().map(|(name, _)| *name)) {
                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                None => "use \"rolling\", \"blue_green\" or \"canary\"".to_string(),
            },
        );
        return DeploySpec::default();
    };
    // Keys of another strategy get their own hint rather than a bare "unknown key".
    let mut elsewhere = Vec::new();
    for key in table.table.keys() {
        let name = key.get_ref().as_ref();
        if DEPLOY_COMMON
            .iter()
            .chain(schema.iter())
            .any(|(known, _)| *known == name)
        {
            continue;
        }
        if let Some((other, _)) = STRATEGIES
            .iter()
            .find(|(_, keys)| keys.iter().any(|(known, _)| *known == name))
        {
            r.problem(
                key.span(),
                format!("`{name}` does not apply to strategy = \"{strategy}\""),
                format!("`{name}` is a setting of strategy = \"{other}\"; remove it or change the strategy"),
            );
            elsewhere.push(name);
        }
    }
    let all: Vec<(&str, &str)> = DEPLOY_COMMON.iter().chain(schema.iter()).copied().collect();
    let table = Tbl {
        schema: &all,
        ..table
    };
    r.unknown_keys_except(&table, &elsewhere);
    let auto_rollback = read_auto_rollback(r, &table);
    let keep_warm = r
        .duration(&table, "keep_warm")
        .unwrap_or(DeploySpec::DEFAULT_KEEP_WARM);
    let strategy = match strategy.as_str() {
        "blue_green" => {
            let defaults = BlueGreen::default();
            Strategy::BlueGreen(BlueGreen {
                healthy_deadline: r
                    .duration(&table, "healthy_deadline")
                    .unwrap_or(defaults.healthy_deadline),
                keep_old: r.duration(&table, "keep_old").unwrap_or(defaults.keep_old),
            })
        }
        "canary" => Strategy::Canary(Canary {
            steps: read_steps(r, &table),
            pause: match r.string(&table, "pause").as_deref() {
                Some("manual") => Pause::Manual,
                Some(_) => Pause::For(
                    r.duration(&table, "pause")
                        .unwrap_or(Duration::from_secs(30)),
                ),
                None => Pause::For(Duration::from_secs(30)),
            },
            min_healthy_time: r
                .duration(&table, "min_healthy_time")
                .unwrap_or(Duration::from_secs(10)),
            healthy_deadline: r
                .duration(&table, "healthy_deadline")
                .unwrap_or(Duration::from_secs(300)),
        }),
        _ => {
            let defaults = Rolling::default();
            let rolling = Rolling {
                max_surge: r
                    .count(&table, "max_surge", 0)
                    .unwrap_or(defaults.max_surge),
                max_unavailable: r
                    .count(&table, "max_unavailable", 0)
                    .unwrap_or(defaults.max_unavailable),
                min_healthy_time: r
                    .duration(&table, "min_healthy_time")
                    .unwrap_or(defaults.min_healthy_time),
                healthy_deadline: r
                    .duration(&table, "healthy_deadline")
                    .unwrap_or(defaults.healthy_deadline),
            };
            if rolling.max_surge == 0 && rolling.max_unavailable == 0 {
                r.problem(
                    table.get("max_surge").map_or(table.span.clone(), Spanned::span),
                    "max_surge = 0 with max_unavailable = 0: a rolling deploy could never start or stop an instance",
                    "allow one extra instance (max_surge = 1) or one missing instance (max_unavailable = 1)",
                );
            }
            Strategy::Rolling(rolling)
        }
    };
    DeploySpec {
        strategy,
        auto_rollback,
        keep_warm,
    }
}

fn read_steps(r: &mut Reader, table: &Tbl<'_, '_>) -> Vec<CanaryStep> {
    let default = vec![CanaryStep::Count(1), CanaryStep::Percent(100)];
    let Some(value) = r.value(table, "steps") else {
        return default;
    };
    let DeValue::Array(items) = value.get_ref() else {
        r.wrong_type(table, "steps", value, "an array");
        return default;
    };
    let mut steps = Vec::new();
    for item in items {
        let step = match item.get_ref() {
            DeValue::String(text) => match text.strip_suffix('%') {
                Some(percent) => percent
                    .parse()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .map(CanaryStep::Percent),
                None => text.parse().ok().filter(|n| *n > 0).map(CanaryStep::Count),
            },
            DeValue::Integer(integer) => integer
                .as_str()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .map(CanaryStep::Count),
            _ => None,
        };
        match step {
            Some(step) => {
                if let Some(previous) = steps.last() {
                    let increasing = match (previous, &step) {
                        (CanaryStep::Count(a), CanaryStep::Count(b)) | (CanaryStep::Percent(a), CanaryStep::Percent(b)) => a < b,
                        _ => true,
                    };
                    if !increasing {
                        r.problem(item.span(), "canary steps must increase", "order the steps from the fewest instances to \"100%\"");
                    }
                }
                steps.push(step);
            }
            None => r.problem(
                item.span(),
                "a canary step must be an instance count like \"2\" or a percentage from \"1%\" to \"100%\"",
                "write it like: steps = [\"1\", \"50%\", \"100%\"]",
            ),
        }
    }
    match steps.last() {
        Some(CanaryStep::Percent(100)) => {}
        _ => r.problem(
            items.iter().last().map_or(value.span(), Spanned::span),
            "canary steps must end at \"100%\"",
            "add \"100%\" as the last step, so the deploy finishes with every instance on the new release",
        ),
    }
    steps
}

fn read_auto_rollback(r: &mut Reader, deploy: &Tbl<'_, '_>) -> Option<AutoRollback> {
    let table = r.table(deploy, "auto_rollback", AUTO_ROLLBACK)?;
    r.unknown_keys(&table);
    let error_rate = match r.value(&table, "error_rate") {
        None => None,
        Some(value) => {
            let rate = match value.get_ref() {
                DeValue::Float(float) => float.as_str().parse::<f64>().ok(),
                DeValue::Integer(integer) => integer.as_str().parse::<f64>().ok(),
                _ => None,
            };
            match rate {
                Some(rate) if (0.0..=1.0).contains(&rate) => Some(rate),
                _ => {
                    r.problem(
                        value.span(),
                        "`error_rate` must be a fraction from 0 to 1",
                        "write it like: error_rate = 0.02 (2%)",
                    );
                    None
                }
            }
        }
    };
    Some(AutoRollback {
        error_rate,
        p99: r.duration(&table, "p99"),
        watch: r
            .duration(&table, "watch")
            .unwrap_or(Duration::from_secs(120)),
        window: r
            .duration(&table, "window")
            .filter(|window| !window.is_zero())
            .unwrap_or(AutoRollback::DEFAULT_WINDOW),
        min_requests: r
            .integer(&table, "min_requests", 1, 1_000_000)
            .map_or(AutoRollback::DEFAULT_MIN_REQUESTS, |n| n as u64),
    })
}
