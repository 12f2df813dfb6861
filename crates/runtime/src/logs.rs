//! Container logs: stdout and stderr lines with timestamps, in size-bounded rotating files.
//!
//! The format is the CRI one, one record per line:
//! `2026-11-29T13:52:29.123456789Z stdout F the line`, where `F` marks a full line and `P` a
//! piece of a line longer than [`MAX_LINE`] (or cut by the process exiting). The current file is
//! `container.log`; older ones are `container.log.1` (newest) to `container.log.N`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The longest piece of output kept as one record; longer lines are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;
/// The current log file's name.
pub const LOG_FILE: &str = "container.log";

/// How much log a container keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLimits {
    /// Size at which the current file is rotated.
    pub max_file_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

/// Which output a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes records to `dir/container.log`, rotating by size. Shared by the stdout and stderr
/// pumps of one container.
#[derive(Clone)]
pub struct LogWriter {
    inner: Arc<Mutex<RotatingFile>>,
}

impl LogWriter {
    /// Opens (appending to) the log in `dir`.
    pub fn open(dir: &Path, limits: LogLimits) -> io::Result<LogWriter> {
        Ok(LogWriter {
            inner: Arc::new(Mutex::new(RotatingFile::open(dir, LOG_FILE, limits)?)),
        })
    }

    /// Appends one record. `partial` marks a piece of a longer line.
    pub fn write_record(&self, stream: Stream, partial: bool, text: &[u8]) -> io::Result<()> {
        let stamp = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
        let mut record = Vec::with_capacity(stamp.len() + text.len() + 12);
        record.extend_from_slice(stamp.as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_str().as_bytes());
        record.extend_from_slice(if partial { b" P " } else { b" F " });
        record.extend_from_slice(text);
        record.push(b'\n');
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_record(&record)
    }

    /// Copies `reader` into records until end of file: one record per line, long lines split.
    pub fn pump(&self, stream: Stream, reader: impl Read) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(MAX_LINE, reader);
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(());
            }
            let full = line.last() == Some(&b'\n');
            if full {
                line.pop();
            }
            self.write_record(stream, !full, &line)?;
        }
    }
}

/// A log file bounded by size: records are appended to `dir/NAME`; one that would take it
/// past `max_file_bytes` first rotates it to `NAME.1` (the older ones to `NAME.2`, … and the
/// oldest away), so at most `max_files` files of about `max_file_bytes` each are kept. A
/// record is never split across files.
pub struct RotatingFile {
    dir: PathBuf,
    name: String,
    limits: LogLimits,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (appending to) `dir/name`, creating `dir` if needed.
    pub fn open(dir: &Path, name: &str, limits: LogLimits) -> io::Result<RotatingFile> {
        fs::create_dir_all(dir)?;
        let file = open_append(&dir.join(name))?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            dir: dir.to_owned(),
            name: name.to_owned(),
            limits,
            file,
            size,
        })
    }

    /// Appends one whole record, rotating first when it would not fit.
    pub fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + record.len() as u64 > self.limits.max_file_bytes {
            self.rotate()?;
        }
        self.file.write_all(record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    fn path(&self, n: u32) -> PathBuf {
        match n {
            0 => self.dir.join(&self.name),
            n => self.dir.join(format!("{}.{n}", self.name)),
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.limits.max_files.max(1);
        if keep == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = fs::remove_file(self.path(keep - 1));
        for n in (0..keep - 1).rev() {
            match fs::rename(self.path(n), self.path(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.file = open_append(&self.path(0))?;
        self.size = 0;
        Ok(())
    }
}

/// A container's output may hold anything it prints, secrets included: root only.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// When it was written (RFC 3339, as in the file).
    pub time: String,
    /// Which output.
    pub stream: Stream,
    /// A piece of a longer line (no newline after it).
    pub partial: bool,
    /// The text, without the newline.
    pub text: Vec<u8>,
}

impl LogRecord {
    fn parse(line: &[u8]) -> Option<LogRecord> {
        let mut parts = line.splitn(4, |b| *b == b' ');
        let time = std::str::from_utf8(parts.next()?).ok()?.to_owned();
        let stream = match parts.next()? {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            _ => return None,
        };
        let partial = match parts.next()? {
            b"P" => true,
            b"F" => false,
            _ => return None,
        };
        let text = parts.next().unwrap_or_default().to_vec();
        Some(LogRecord {
            time,
            stream,
            partial,
            text,
        })
    }

    /// When it was written.
    pub fn timestamp(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.time, &Rfc3339).ok()
    }
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only records written at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only the last N records (before following).
    pub tail: Option<usize>,
}

/// Reads the records in `dir` (oldest file first) that match `query`.
pub fn read(dir: &Path, query: &LogQuery) -> io::Result<Vec<LogRecord>> {
    match open_current(dir) {
        Ok(mut current) => Ok(history(dir, query, &mut current)?.0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Opens the current file. A rotation renames it away a moment before it creates the new
/// one: a missing file is retried for a while before it counts as missing.
fn open_current(dir: &Path) -> io::Result<File> {
    let path = dir.join(LOG_FILE);
    let mut attempts = 0;
    loop {
        match File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// The matching records of the rotated files and of `current` (the open current file), and
/// the offset in `current` after the last complete record.
fn history(dir: &Path, query: &LogQuery, current: &mut File) -> io::Result<(Vec<LogRecord>, u64)> {
    let mut records = Vec::new();
    let current_inode = current.metadata()?.ino();
    for path in rotated_oldest_first(dir) {
        match File::open(&path) {
            // Rotated since we opened it: it is read below, as the current file.
            Ok(file) if file.metadata()?.ino() == current_inode => {}
            Ok(file) => {
                read_records(BufReader::new(file), query, &mut records)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    current.seek(SeekFrom::Start(0))?;
    let offset = read_records(BufReader::new(&mut *current), query, &mut records)?;
    if let Some(tail) = query.tail {
        let skip = records.len().saturating_sub(tail);
        records.drain(..skip);
    }
    Ok((records, offset))
}

fn read_records(
    mut reader: impl BufRead,
    query: &LogQuery,
    out: &mut Vec<LogRecord>,
) -> io::Result<u64> {
    let mut consumed = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            // End, or a record still being written: leave it for the next read.
            return Ok(consumed);
        }
        consumed += n as u64;
        line.pop();
        let Some(record) = LogRecord::parse(&line) else {
            continue;
        };
        let recent = match (query.since, record.timestamp()) {
            (Some(since), Some(at)) => at >= since,
            _ => true,
        };
        if recent {
            out.push(record);
        }
    }
}

fn rotated_oldest_first(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let n = name.to_str()?.strip_prefix(LOG_FILE)?.strip_prefix('.')?;
            Some((n.parse().ok()?, entry.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    rotated.into_iter().map(|(_, p)| p).collect()
}

/// Reads `query`'s records, then keeps delivering new ones (across rotations) until
/// `keep_going` says stop; the records written before it said so are delivered first.
pub fn follow(
    dir: &Path,
    query: &LogQuery,
    mut keep_going: impl FnMut() -> bool,
    mut sink: impl FnMut(&LogRecord) -> io::Result<()>,
) -> io::Result<()> {
    let path = dir.join(LOG_FILE);
    let mut file = open_current(dir)?;
    let mut inode = file.metadata()?.ino();
    let (history, mut offset) = history(dir, query, &mut file)?;
    for record in &history {
        sink(record)?;
    }
    let since_none = LogQuery::default();
    loop {
        let last_round = !keep_going();
        // New records in the file we hold.
        file.seek(SeekFrom::Start(offset))?;
        let mut fresh = Vec::new();
        offset += read_records(BufReader::new(&mut file), &since_none, &mut fresh)?;
        for record in &fresh {
            sink(record)?;
        }
        // Rotated: the held file is complete; go on with the file written after it.
        if fs::metadata(&path).map(|m| m.ino()).ok() != Some(inode) {
            if let Some(next) = next_file(dir, inode) {
                file = next;
                inode = file.metadata()?.ino();
                offset = 0;
                continue;
            }
        }
        if last_round {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The file written after the one with inode `held` (which the caller still holds open, so
/// its inode cannot be reused); the oldest file if `held` was already deleted.
fn next_file(dir: &Path, held: u64) -> Option<File> {
    let files: Vec<File> = rotated_oldest_first(dir)
        .into_iter()
        .chain(std::iter::once(dir.join(LOG_FILE)))
        .filter_map(|path| File::open(path).ok())
        .collect();
    let position = files
        .iter()
        .position(|file| file.metadata().is_ok_and(|meta| meta.ino() == held));
    let next = position.map_or(0, |p| p + 1);
    files.into_iter().nth(next)
}

#[cfg(test)]
mod tests;
