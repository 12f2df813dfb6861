//! The byte layout of records in the redb file: fixed-width little-endian integers and
//! length-prefixed byte strings, so values are stored as they are (no JSON of byte arrays).

use crate::engine::LeaseRecord;
use crate::{Entry, EventKind, LeaseId, Result, StoreError, WatchEvent};

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads what the `put_` functions wrote.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn corrupt(&self) -> StoreError {
        StoreError::Corrupt {
            what: self.what.to_owned(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(self.corrupt());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64> {
        let mut word = [0; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(self.u64()?).map_err(|_| self.corrupt())?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt())
    }
}

fn lease_word(lease: Option<LeaseId>) -> u64 {
    lease.map_or(0, |id| id.0)
}

fn lease_of(word: u64) -> Option<LeaseId> {
    (word != 0).then_some(LeaseId(word))
}

/// An entry's record (its key is the table key): mod, create, lease (0 = none), value.
pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + entry.value.len());
    put_u64(&mut out, entry.mod_revision);
    put_u64(&mut out, entry.create_revision);
    put_u64(&mut out, lease_word(entry.lease));
    out.extend_from_slice(&entry.value);
    out
}

pub(crate) fn decode_entry(key: &str, bytes: &[u8]) -> Result<Entry> {
    let mut reader = Reader { bytes, what: key };
    let mod_revision = reader.u64()?;
    let create_revision = reader.u64()?;
    let lease = lease_of(reader.u64()?);
    Ok(Entry {
        key: key.to_owned(),
        value: reader.bytes.to_vec(),
        mod_revision,
        create_revision,
        lease,
    })
}

pub(crate) fn encode_lease(lease: &LeaseRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    put_u64(&mut out, lease.ttl_millis);
    put_u64(&mut out, lease.expires_at);
    out
}

pub(crate) fn decode_lease(id: LeaseId, bytes: &[u8]) -> Result<LeaseRecord> {
    let what = format!("lease {id}");
    let mut reader = Reader { bytes, what: &what };
    Ok(LeaseRecord {
        ttl_millis: reader.u64()?,
        expires_at: reader.u64()?,
    })
}

/// The events of one revision (the revision is the table key).
pub(crate) fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        out.push(match event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        put_bytes(&mut out, event.entry.key.as_bytes());
        put_bytes(&mut out, &event.entry.value);
        put_u64(&mut out, event.entry.mod_revision);
        put_u64(&mut out, event.entry.create_revision);
        put_u64(&mut out, lease_word(event.entry.lease));
    }
    out
}

pub(crate) fn decode_events(revision: u64, bytes: &[u8]) -> Result<Vec<WatchEvent>> {
    let what = format!("change log at revision {revision}");
    let mut reader = Reader { bytes, what: &what };
    let mut events = Vec::new();
    while !reader.bytes.is_empty() {
        let kind = match reader.u8()? {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return Err(reader.corrupt()),
        };
        let key = reader.string()?;
        let value = reader.bytes()?.to_vec();
        events.push(WatchEvent {
            kind,
            entry: Entry {
                key,
                value,
                mod_revision: reader.u64()?,
                create_revision: reader.u64()?,
                lease: lease_of(reader.u64()?),
            },
            revision,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests;
