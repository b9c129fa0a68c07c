//! A node's durable log of PBFT records: one append-only file for all the
//! replicas a node runs, so one `fdatasync` covers a round of all of them.
//!
//! Each record is framed as `len u32 | crc32c u32 | cluster u64 | record`
//! (the record as [`super::wire::encode_durable`] writes it; the CRC covers
//! cluster and record). A crash can leave a torn last record: on open, a
//! frame that is short or fails its CRC with no intact frame after it is
//! cut off, since nothing after it was ever acknowledged as durable. A bad
//! frame with intact frames after it is not a torn write but damage (bit
//! rot, a bad sector), and the record it held may have been a vote its
//! replica must not contradict. Then the log is set aside (renamed, for
//! whoever investigates), a new one holds the intact records before the
//! damage and a marker, and every replica made from it recovers from the
//! loss (see [`super::Recovered::amnesia`]). Records after the damage are
//! not trusted: the bytes a lost length pointed past may be a record
//! value a client chose. The log is compacted by writing what the replicas
//! still need to a new file, syncing it, and renaming it over the old one.

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

/// The cluster id of the marker a log rewritten after damage starts
/// with (no partition's cluster: those are hashes of their members and
/// the ledger key, and this one is reserved).
pub const DAMAGE_MARKER_CLUSTER: u64 = u64::MAX;

/// What [`DurableLog::open`] read back.
#[derive(Debug, Default)]
pub struct Contents {
    /// Every intact record, by cluster, oldest first.
    pub records: BTreeMap<u64, Vec<Durable>>,
    /// Records were lost to damage (now, or at an open since the log was
    /// last compacted): every replica made from this log recovers from
    /// the loss.
    pub damaged: bool,
    /// The file did not exist: this node has no log at all yet.
    pub created: bool,
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
    /// Opens (or creates) the log and returns what it holds.
    pub fn open(path: &Path) -> Result<(Self, Contents), LogError> {
        let io = |source| LogError::Io {
            path: path.display().to_string(),
            source,
        };
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(io)?;
        let raw = Bytes::from(raw);
        let (mut records, intact, damaged_now) = parse(&raw);
        let mut len = intact as u64;
        if damaged_now {
            let aside = path.with_extension(format!(
                "log.damaged-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            ));
            tracing::error!(
                path = %path.display(),
                at = intact,
                set_aside = %aside.display(),
                "durable log damaged: a record cannot be read back; this node's replicas abstain from voting until past what they may have voted on"
            );
            let mut kept = BytesMut::from(&raw[..intact]);
            frame(&mut kept, DAMAGE_MARKER_CLUSTER, &Durable::Abstain { through: 0 });
            std::fs::rename(path, &aside).map_err(io)?;
            file = write_synced(path, &kept).map_err(io)?;
            len = kept.len() as u64;
        } else if intact < raw.len() {
            tracing::warn!(path = %path.display(), cut = raw.len() - intact, "cutting a torn tail off the durable log");
            file.set_len(intact as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let damaged = damaged_now || records.remove(&DAMAGE_MARKER_CLUSTER).is_some();
        Ok((
            Self {
                path: path.to_owned(),
                file,
                pending: BytesMut::new(),
                len,
            },
            Contents {
                records,
                damaged,
                created,
            },
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
        self.file = write_synced(&self.path, &buf).map_err(io)?;
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

/// The intact frame at `at`: its cluster, its record and where the next
/// frame starts. Cheap checks first, so that looking for a frame at every
/// offset of a damaged stretch costs little: a plausible length, a record
/// that decodes whole, then its CRC.
fn frame_at(raw: &Bytes, at: usize) -> Option<(u64, Durable, usize)> {
    let head = raw.get(at..at + 8)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if !(9..=RECORD_BYTES_MAX).contains(&len) || raw.len() < at + 8 + len {
        return None;
    }
    let body = raw.slice(at + 8..at + 8 + len);
    let record = decode_durable(body.slice(8..)).ok()?;
    if crc32c::crc32c(&body) != crc {
        return None;
    }
    let cluster = u64::from_be_bytes(body[..8].try_into().ok()?);
    Some((cluster, record, at + 8 + len))
}

/// Writes `bytes` as the file at `path`, durably (a new file synced, then
/// renamed over the old one, then the directory synced): a crash leaves
/// either the old file or the new one. Returns it open for appending.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<File> {
    let tmp = path.with_extension("compacting");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all())?;
    }
    OpenOptions::new().read(true).append(true).open(path)
}

/// The intact records before the first bad frame, where they end, and
/// whether that bad frame is damage (intact frames follow it) rather than
/// a torn tail.
fn parse(raw: &Bytes) -> (BTreeMap<u64, Vec<Durable>>, usize, bool) {
    let mut out: BTreeMap<u64, Vec<Durable>> = BTreeMap::new();
    let mut at = 0;
    while let Some((cluster, record, next)) = frame_at(raw, at) {
        out.entry(cluster).or_default().push(record);
        at = next;
    }
    if at == raw.len() {
        return (out, at, false);
    }
    // The frame's own length, when it leads to an intact frame, says where
    // the next one starts; else look for one at every later offset.
    let len = raw
        .get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let skip = at + 8 + len;
    let damaged = (len >= 9 && skip < raw.len() && frame_at(raw, skip).is_some())
        || (at + 1..raw.len()).any(|p| frame_at(raw, p).is_some());
    (out, at, damaged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.log");
        {
            let (mut log, contents) = DurableLog::open(&path).unwrap();
            assert!(contents.records.is_empty() && contents.created && !contents.damaged);
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
        let (log, contents) = DurableLog::open(&path).unwrap();
        assert!(!contents.damaged && !contents.created, "a torn tail is not damage");
        let records = contents.records;
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
    }

    fn view(view: u64) -> Durable {
        Durable::View { view, changing: false }
    }

    /// A bad record with intact ones after it is damage, not a torn tail:
    /// the records before it are kept, the ones after it are not trusted,
    /// the damaged file is set aside, and the damage is reported at every
    /// open until a compaction writes what the replicas need.
    #[test]
    fn damage_inside_the_log_is_reported_until_the_log_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.log");
        let (mut log, _) = DurableLog::open(&path).unwrap();
        for v in 0..5 {
            log.append(3, &view(v));
        }
        log.sync().unwrap();
        drop(log);
        let full = std::fs::read(&path).unwrap();
        let frame_len = full.len() / 5;
        for (what, at) in [("a record", 2 * frame_len + 20), ("a length", 2 * frame_len + 1)] {
            let mut bad = full.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let (_, contents) = DurableLog::open(&path).unwrap();
            assert!(contents.damaged, "damage in {what} is reported");
            assert_eq!(contents.records[&3], vec![view(0), view(1)], "{what}");
            let aside: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
                .collect();
            assert!(!aside.is_empty(), "the damaged log is kept aside");
            for e in aside {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        // Reopened: the damage is still reported, and appends go on.
        let (mut log, contents) = DurableLog::open(&path).unwrap();
        assert!(contents.damaged);
        log.append(3, &view(9));
        log.sync().unwrap();
        drop(log);
        let (mut log, contents) = DurableLog::open(&path).unwrap();
        assert!(contents.damaged);
        assert_eq!(contents.records[&3], vec![view(0), view(1), view(9)]);
        // A compaction writes only what the replicas hand it.
        log.rewrite([(3, view(9))]).unwrap();
        drop(log);
        let (_, contents) = DurableLog::open(&path).unwrap();
        assert!(!contents.damaged);
        assert_eq!(contents.records[&3], vec![view(9)]);
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
        let (_, contents) = DurableLog::open(&path).unwrap();
        assert_eq!(
            contents.records[&1],
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
