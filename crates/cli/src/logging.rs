//! The process's logs: everything to stderr, except the proxy's access log
//! (`berth_proxy::access` events), which `berth server` writes to a file rotated by size
//! unless told otherwise, so that it never grows without bound.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_runtime::logs::{LogLimits, RotatingFile};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of the proxy's access log events.
const ACCESS_TARGET: &str = "berth_proxy::access";

/// Where the proxy's access log goes.
pub enum AccessLog {
    /// With everything else, on stderr.
    Stderr,
    /// Nowhere.
    Off,
    /// To `path`, rotated by `limits`.
    File {
        /// The current file.
        path: PathBuf,
        /// Its size and how many rotated files are kept.
        limits: LogLimits,
    },
}

/// Logs to stderr at `filter` (`BERTH_LOG`), JSON lines when `json`; the access log as
/// `access` says.
pub fn init(json: bool, filter: &str, access: AccessLog) -> anyhow::Result<()> {
    // hickory's server logs every DNS question at INFO; berth's own DNS answers are
    // visible through `dig` and the catalog, so it speaks only of problems unless asked.
    let mut filter = if filter.contains("hickory") {
        filter.to_owned()
    } else {
        format!("{filter},hickory_server=warn")
    };
    let file = match access {
        AccessLog::Stderr => None,
        AccessLog::Off => {
            filter.push_str(&format!(",{ACCESS_TARGET}=off"));
            None
        }
        AccessLog::File { path, limits } => {
            filter.push_str(&format!(",{ACCESS_TARGET}=off"));
            let dir = path.parent().map(PathBuf::from).unwrap_or_default();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    anyhow::anyhow!("the access log {} is not a file path", path.display())
                })?;
            let file = RotatingFile::open(&dir, &name, limits).map_err(|e| {
                anyhow::anyhow!("opening the proxy's access log {}: {e}", path.display())
            })?;
            Some(AccessFile(Arc::new(Mutex::new(file))))
        }
    };
    let general_filter = EnvFilter::try_new(&filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
    let general = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let general = if json {
        general.json().with_filter(general_filter).boxed()
    } else {
        general.with_filter(general_filter).boxed()
    };
    let access = file.map(|file| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(file)
            .with_ansi(false);
        let only_access = tracing_subscriber::filter::Targets::new()
            .with_target(ACCESS_TARGET, tracing::Level::INFO);
        if json {
            layer.json().with_filter(only_access).boxed()
        } else {
            layer.with_filter(only_access).boxed()
        }
    });
    tracing_subscriber::registry()
        .with(general)
        .with(access)
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))
}

/// The access log file, shared by every event.
#[derive(Clone)]
struct AccessFile(Arc<Mutex<RotatingFile>>);

/// One event's write: the formatter writes the whole line at once, so a line is one record
/// and never straddles a rotation.
struct AccessWrite<'a>(&'a AccessFile);

impl Write for AccessWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
             .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write_record(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for AccessFile {
    type Writer = AccessWrite<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        AccessWrite(self)
    }
}
