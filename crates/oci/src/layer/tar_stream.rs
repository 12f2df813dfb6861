//! A tar stream read entry by entry, with every extension header bounded before it is read.
//!
//! The `tar` crate parses the header blocks; the walk through the stream is ours, for two
//! reasons. Its default mode reads GNU long names and pax headers whole, however large they
//! claim to be. And its raw mode, which does not, ignores a pax `size` record, so it would
//! find the next header somewhere other than where Go's archive/tar, GNU tar or umoci find
//! it: the parser disagreement behind CVE-2025-62518. Here a pax `size` always wins, and
//! pax `path`, `linkpath`, `uid`, `gid`, `mtime` and `SCHILY.xattr.*` records apply to the
//! entry that follows them.

use std::io::Read;

use tar::EntryType;

use super::{LayerError, MAX_NAME, MAX_PAX};

const BLOCK: u64 = 512;

/// A modification time: seconds since the epoch (possibly negative) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Mtime {
    pub secs: i64,
    pub nanos: u32,
}

/// One entry's header, with its extension headers applied.
#[derive(Debug)]
pub(super) struct Header {
    pub kind: EntryType,
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: Mtime,
    /// Extended attributes from `SCHILY.xattr.NAME` records, in the order given.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Records of a pax header that berth applies to the next entry.
#[derive(Debug, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Mtime>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) struct TarStream<R> {
    inner: R,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
}

fn malformed(what: impl Into<String>) -> LayerError {
    LayerError::Read(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        what.into(),
    ))
}

fn truncated() -> LayerError {
    LayerError::Read(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the tar stream ends in the middle of an entry",
    ))
}

impl<R: Read> TarStream<R> {
    pub fn new(inner: R) -> Self {
        TarStream {
            inner,
            remaining: 0,
            padding: 0,
        }
    }

    /// The next entry's header, or `None` at the end of the archive. The entry's data is
    /// read with [`TarStream::data`] before the next call; what is left of it is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Header>, LayerError> {
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let (mut long_path, mut long_link) = (None, None);
        let mut pax = Pax::default();
        loop {
            let Some(header) = self.block()? else {
                return Ok(None);
            };
            let kind = header.entry_type();
            let size = match pax.size {
                Some(size) if !is_extension(kind) => size,
                _ => header.entry_size().map_err(LayerError::Read)?,
            };
            match kind {
                EntryType::GNULongName => {
                    long_path = Some(self.extension(size, MAX_NAME, "GNU long name")?);
                }
                EntryType::GNULongLink => {
                    long_link = Some(self.extension(size, MAX_NAME, "GNU long link name")?);
                }
                EntryType::XHeader => {
                    pax = parse_pax(&self.extension(size, MAX_PAX, "pax header")?)?;
                }
                EntryType::XGlobalHeader => {
                    // Describes the archive, not an entry: read (bounded) and ignored, as
                    // Docker and containerd do.
                    self.extension(size, MAX_PAX, "pax global header")?;
                }
                _ => {
                    let path = pax
                        .path
                        .or(long_path)
                        .unwrap_or_else(|| header.path_bytes().into_owned());
                    let link = pax
                        .link
                        .or(long_link)
                        .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
                    // An old-style regular file whose name ends in '/' is a directory
                    // (Go's archive/tar reads it so).
                    let kind = if header.as_bytes()[156] == 0 && path.ends_with(b"/") {
                        EntryType::Directory
                    } else {
                        kind
                    };
                    let mtime = match pax.mtime {
                        Some(mtime) => mtime,
                        None => Mtime {
                            secs: i64::try_from(numeric(&header, 136..148, header.mtime())?)
                                .unwrap_or(i64::MAX),
                            nanos: 0,
                        },
                    };
                    let entry = Header {
                        kind,
                        mode: numeric(&header, 100..108, header.mode().map(u64::from))? as u32
                            & 0o7777,
                        uid: match pax.uid {
                            Some(uid) => uid,
                            None => numeric(&header, 108..116, header.uid())?,
                        },
                        gid: match pax.gid {
                            Some(gid) => gid,
                            None => numeric(&header, 116..124, header.gid())?,
                        },
                        mtime,
                        xattrs: pax.xattrs,
                        path,
                        link,
                    };
                    self.remaining = size;
                    self.padding = padding(size);
                    return Ok(Some(entry));
                }
            }
        }
    }

    /// The current entry's data.
    pub fn data(&mut self) -> Data<'_, R> {
        Data { stream: self }
    }

    /// The next header block, checked; `None` at the end-of-archive marker or at the end
    /// of the stream on a block boundary.
    fn block(&mut self) -> Result<Option<tar::Header>, LayerError> {
        let mut header = tar::Header::new_old();
        let buf = header.as_mut_bytes();
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(truncated()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LayerError::Read(e)),
            }
        }
        if buf.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let sum: u32 = buf[..148]
            .iter()
            .chain(&buf[156..])
            .map(|&b| u32::from(b))
            .sum::<u32>()
            + 8 * u32::from(b' ');
        let recorded = header
            .cksum()
            .map_err(|_| malformed("a header has no checksum"))?;
        if sum != recorded {
            return Err(malformed("a header's checksum does not match"));
        }
        Ok(Some(header))
    }

    /// Reads an extension header's content of `size` bytes, refused above `limit` before
    /// anything is read; trailing NULs dropped.
    fn extension(
        &mut self,
        size: u64,
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, LayerError> {
        if size > limit {
            return Err(LayerError::HeaderTooLarge { what, size, limit });
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut self.inner)
            .take(size)
            .read_to_end(&mut data)
            .map_err(LayerError::Read)?;
        if data.len() as u64 != size {
            return Err(truncated());
        }
        self.skip(padding(size))?;
        while data.last() == Some(&0) {
            data.pop();
        }
        Ok(data)
    }

    fn skip(&mut self, n: u64) -> Result<(), LayerError> {
        if n == 0 {
            return Ok(());
        }
        let skipped = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(LayerError::Read)?;
        if skipped != n {
            return Err(truncated());
        }
        Ok(())
    }
}

/// The current entry's data, as a reader that stops at its end.
pub(super) struct Data<'a, R> {
    stream: &'a mut TarStream<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stream.remaining == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.stream.remaining).unwrap_or(usize::MAX));
        let n = self.stream.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the tar stream ends in the middle of an entry",
            ));
        }
        self.stream.remaining -= n as u64;
        Ok(n)
    }
}

/// A numeric header field; an empty one (all NULs or spaces) reads as 0, as Go's
/// archive/tar reads it.
fn numeric(
    header: &tar::Header,
    field: std::ops::Range<usize>,
    parsed: std::io::Result<u64>,
) -> Result<u64, LayerError> {
    match parsed {
        Ok(value) => Ok(value),
        Err(_)
            if header.as_bytes()[field]
                .iter()
                .all(|&b| b == 0 || b == b' ') =>
        {
            Ok(0)
        }
        Err(e) => Err(LayerError::Read(e)),
    }
}

fn is_extension(kind: EntryType) -> bool {
    matches!(
        kind,
        EntryType::GNULongName
            | EntryType::GNULongLink
            | EntryType::XHeader
            | EntryType::XGlobalHeader
    )
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The records of a pax header (`LEN key=value\n` each) that berth applies.
fn parse_pax(data: &[u8]) -> Result<Pax, LayerError> {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        let bad = || malformed("a pax header has a malformed record");
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let number = |what: &str| -> Result<u64, LayerError> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| malformed(format!("a pax {what} record is not a number")))
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.link = Some(value.to_vec()),
            b"size" => pax.size = Some(number("size")?),
            b"uid" => pax.uid = Some(number("uid")?),
            b"gid" => pax.gid = Some(number("gid")?),
            b"mtime" => pax.mtime = Some(parse_time(value)?),
            _ if key.starts_with(b"SCHILY.xattr.") => {
                pax.xattrs
                    .push((key[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()));
            }
            _ if key.starts_with(b"GNU.sparse.") => {
                return Err(malformed(
                    "sparse files (GNU.sparse pax records) are not supported",
                ))
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(pax)
}

/// A pax time: `[-]SECONDS[.FRACTION]`.
fn parse_time(value: &[u8]) -> Result<Mtime, LayerError> {
    let bad = || malformed("a pax mtime record is not a time");
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = whole.parse().map_err(|_| bad())?;
    let mut nanos: u32 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Ok(if !negative {
        Mtime { secs, nanos }
    } else if nanos == 0 {
        Mtime { secs: -secs, nanos }
    } else {
        Mtime {
            secs: -secs - 1,
            nanos: 1_000_000_000 - nanos,
        }
    })
}
