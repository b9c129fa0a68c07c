//! A node's durable log of PBFT records: one append-only file for all the
//! replicas a node runs, so one `fdatasync` covers a round of all of them.
//!
//! Each record is framed as `len u32 | crc32c u32 | cluster u64 | record`
//! (the record as [`super::wire::encode_durable`] writes it; the CRC covers
//! cluster and record). A crash can leave a torn last record: on open,
//! everything from the first frame that is short or fails its CRC is cut
//! off, since nothing after it was ever acknowledged as durable. The log is
//! compacted by writing what the replicas still need to a new file, syncing
//! it, and renaming it over the old one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{decode_durable, encode_durable};
use super::Durable;

/// Largest record accepted when reading back (a pre-prepare of the largest
/// batch with room to spare); anything larger is a torn or foreign frame.
pub const RECORD_BYTES_MAX: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("durable log {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub struct DurableLog {
    path: PathBuf,
    file: File,
    /// Records framed but not yet written.
    pending: BytesMut,
    /// Bytes in the file, for deciding when to compact.
    len: u64,
}

impl DurableLog {
    /// Opens (or creates) the log and returns every intact record, by
    /// cluster, oldest first.
    pub fn open(path: &Path) -> Result<(Self, BTreeMap<u64, Vec<Durable>>), LogError> {
        let io = |source| LogError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(io)?;
        let raw = Bytes::from(raw);
        let (records, intact) = parse(&raw);
        if intact < raw.len() {
            tracing::warn!(path = %path.display(), cut = raw.len() - intact, "cutting a torn tail off the durable log");
            file.set_len(intact as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok((
            Self {
                path: path.to_owned(),
                file,
                pending: BytesMut::new(),
                len: intact as u64,
            },
            records,
        ))
    }

    /// Frames a record; it is durable after the next [`DurableLog::sync`].
    pub fn append(&mut self, cluster: u64, record: &Durable) {
        frame(&mut self.pending, cluster, record);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes what was appended and waits for the disk.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let io = |source| LogError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let written = self.file.write_all(&self.pending).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // What the failed write or sync covered is unknown on disk: cut
            // it off, so that the next attempt writes the records again
            // whole (a second fsync of the same pages proves nothing: the
            // kernel may have dropped them after the first one failed).
            let _ = self.file.set_len(self.len);
            return Err(io(e));
        }
        self.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Replaces the log with `records` (what every replica still needs),
    /// durably: a crash leaves either the old log or the new one.
    pub fn rewrite(&mut self, records: impl IntoIterator<Item = (u64, Durable)>) -> Result<(), LogError> {
        let io = |source| LogError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut buf = BytesMut::new();
        for (cluster, r) in records {
            frame(&mut buf, cluster, &r);
        }
        buf.extend_from_slice(&self.pending);
        let tmp = self.path.with_extension("compacting");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&buf).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(io)?;
        self.len = buf.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

fn frame(out: &mut BytesMut, cluster: u64, record: &Durable) {
    let body = encode_durable(record);
    let mut crc = crc32c::crc32c(&cluster.to_be_bytes());
    crc = crc32c::crc32c_append(crc, &body);
    out.put_u32((8 + body.len()) as u32);
    out.put_u32(crc);
    out.put_u64(cluster);
    out.put_slice(&body);
}

/// Every intact record, and the length of the intact prefix.
fn parse(raw: &Bytes) -> (BTreeMap<u64, Vec<Durable>>, usize) {
    let mut out: BTreeMap<u64, Vec<Durable>> = BTreeMap::new();
    let mut at = 0;
    while let Some(head) = raw.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if !(8..=RECORD_BYTES_MAX).contains(&len) || raw.len() < at + 8 + len {
            break;
        }
        let body = raw.slice(at + 8..at + 8 + len);
        if crc32c::crc32c(&body) != crc {
            break;
        }
        let cluster = u64::from_be_bytes(body[..8].try_into().unwrap_or_default());
        match decode_durable(body.slice(8..)) {
            Ok(record) => out.entry(cluster).or_default().push(record),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (out, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.log");
        {
            let (mut log, records) = DurableLog::open(&path).unwrap();
            assert!(records.is_empty());
            log.append(
                7,
                &Durable::View {
                    view: 1,
                    changing: true,
                },
            );
            log.append(
                9,
                &Durable::View {
                    view: 2,
                    changing: false,
                },
            );
            log.sync().unwrap();
            log.append(
                7,
                &Durable::View {
                    view: 1,
                    changing: false,
                },
            );
            log.sync().unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        // Half a record at the end, as a crash mid-write leaves it.
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let (log, records) = DurableLog::open(&path).unwrap();
        assert_eq!(
            records[&7],
            vec![Durable::View {
                view: 1,
                changing: true
            }]
        );
        assert_eq!(
            records[&9],
            vec![Durable::View {
                view: 2,
                changing: false
            }]
        );
        assert_eq!(log.len(), std::fs::metadata(&path).unwrap().len());
        // A flipped bit ends the intact prefix too.
        let mut bad = full.clone();
        bad[12] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (_, records) = DurableLog::open(&path).unwrap();
        assert!(records.is_empty());
    }

    #[test]
    fn a_rewrite_keeps_only_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.log");
        let (mut log, _) = DurableLog::open(&path).unwrap();
        for v in 0..100 {
            log.append(
                1,
                &Durable::View {
                    view: v,
                    changing: false,
                },
            );
        }
        log.sync().unwrap();
        let before = log.len();
        log.rewrite([(
            1,
            Durable::View {
                view: 99,
                changing: false,
            },
        )])
        .unwrap();
        assert!(log.len() < before);
        log.append(
            1,
            &Durable::View {
                view: 100,
                changing: true,
            },
        );
        log.sync().unwrap();
        drop(log);
        let (_, records) = DurableLog::open(&path).unwrap();
        assert_eq!(
            records[&1],
            vec![
                Durable::View {
                    view: 99,
                    changing: false
                },
                Durable::View {
                    view: 100,
                    changing: true
                }
            ]
        );
    }
}
