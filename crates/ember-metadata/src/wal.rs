//! The redo log in front of the redb file.
//!
//! A durable redb commit rewrites several scattered pages and costs one to three
//! times a single-page sync. So each transaction instead commits to redb without
//! syncing (visible at once, kept by redb until its next durable commit) and
//! appends its write set, the records it put or deleted, to this log; the caller
//! returns once the log is synced up to its record. Concurrent writers share one
//! `fdatasync` (the first to need one syncs for everyone appended before it).
//!
//! A checkpoint (a durable redb commit) makes everything before it durable in the
//! database itself, after which the log starts again at offset 0. Each transaction
//! also stores its log sequence number in redb, so after a crash the database
//! knows the last record it holds and [`replay`] applies the records after it.
//!
//! ```text
//! file     preallocated (zeros written once, so a sync flushes data pages only)
//! record   len:u32  crc32(lsn..end):u32  lsn:u64  op*        (little endian)
//! op       1 table key value     put
//!          2 table key           delete
//!          3 name  value:u64     counter
//! strings  len:u32 bytes
//! ```
//!
//! Records of one cycle have consecutive sequence numbers from offset 0. Reading
//! stops at the first record that is torn (bad length or checksum) or does not
//! continue the sequence: what follows is left over from an earlier cycle, whose
//! numbers are all lower.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::{Error, Result};

/// Log size: a checkpoint comes before a record that would not fit.
pub(crate) const CAPACITY: u64 = 8 << 20;
/// A checkpoint also comes after this many records, to bound what redb keeps
/// between durable commits.
pub(crate) const CHECKPOINT_RECORDS: u64 = 2048;

const HEADER: usize = 16;

/// One change of a transaction's write set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put {
        table: String,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        table: String,
        key: String,
    },
    Counter {
        name: String,
        value: u64,
    },
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::Internal(format!("metadata log: {what}: {e}"))
}

pub(crate) fn encode(lsn: u64, ops: &[Op]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s);
    }
    let mut out = vec![0; HEADER];
    out[8..16].copy_from_slice(&lsn.to_le_bytes());
    for op in ops {
        match op {
            Op::Put { table, key, value } => {
                out.push(1);
                string(&mut out, table.as_bytes());
                string(&mut out, key.as_bytes());
                string(&mut out, value);
            }
            Op::Delete { table, key } => {
                out.push(2);
                string(&mut out, table.as_bytes());
                string(&mut out, key.as_bytes());
            }
            Op::Counter { name, value } => {
                out.push(3);
                string(&mut out, name.as_bytes());
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the record at the start of `buf`: its sequence number, ops and length;
/// `None` when there is no whole, intact record.
pub(crate) fn decode(buf: &[u8]) -> Option<(u64, Vec<Op>, usize)> {
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let len = word(buf, 0)? as usize;
    if len < HEADER || len > buf.len() {
        return None;
    }
    let rec = &buf[..len];
    if crc32fast::hash(&rec[8..]) != word(rec, 4)? {
        return None;
    }
    let lsn = u64::from_le_bytes(rec[8..16].try_into().ok()?);
    let mut at = HEADER;
    let string = |at: &mut usize| -> Option<Vec<u8>> {
        let n = word(rec, *at)? as usize;
        let s = rec.get(*at + 4..(*at + 4).checked_add(n)?)?.to_vec();
        *at += 4 + n;
        Some(s)
    };
    let text = |b: Vec<u8>| String::from_utf8(b).ok();
    let mut ops = Vec::new();
    while at < len {
        let tag = rec[at];
        at += 1;
        ops.push(match tag {
            1 => Op::Put {
                table: text(string(&mut at)?)?,
                key: text(string(&mut at)?)?,
                value: string(&mut at)?,
            },
            2 => Op::Delete {
                table: text(string(&mut at)?)?,
                key: text(string(&mut at)?)?,
            },
            3 => {
                let name = text(string(&mut at)?)?;
                let value = u64::from_le_bytes(rec.get(at..at + 8)?.try_into().ok()?);
                at += 8;
                Op::Counter { name, value }
            }
            _ => return None,
        });
    }
    Some((lsn, ops, len))
}

/// The records after `after` in the log's current cycle, in order.
pub(crate) fn replay(path: &Path, after: u64) -> Result<Vec<(u64, Vec<Op>)>> {
    let buf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", e)),
    };
    let mut out = Vec::new();
    let mut at = 0;
    let mut prev: Option<u64> = None;
    while let Some((lsn, ops, len)) = decode(&buf[at..]) {
        if prev.is_some_and(|p| lsn != p + 1) {
            break;
        }
        if lsn > after {
            if lsn != after + 1 + out.len() as u64 {
                return Err(Error::Internal(format!(
                    "metadata log: record {lsn} follows the database's {after} with a gap"
                )));
            }
            out.push((lsn, ops));
        }
        prev = Some(lsn);
        at += len;
    }
    Ok(out)
}

struct State {
    /// Where the next record goes.
    offset: u64,
    /// Records since the last checkpoint.
    records: u64,
    /// The last sequence number appended.
    appended: u64,
    /// Everything up to this sequence number is durable.
    synced: u64,
    /// A writer is syncing for everyone.
    syncing: bool,
}

/// The open log.
pub(crate) struct Wal {
    file: File,
    state: Mutex<State>,
    synced_cv: Condvar,
}

impl Wal {
    /// Opens (creating and preallocating when needed) the log at `path` for a new
    /// cycle after sequence number `last`, which the database holds durably.
    pub(crate) fn open(path: &Path, last: u64) -> Result<Wal> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_err("opening", e))?;
        let size = file.metadata().map_err(|e| io_err("stat", e))?.len();
        if size < CAPACITY {
            let zeros = vec![0u8; 1 << 20];
            let mut at = size;
            while at < CAPACITY {
                file.write_all_at(&zeros, at)
                    .map_err(|e| io_err("preallocating", e))?;
                at += zeros.len() as u64;
            }
            file.flush().map_err(|e| io_err("preallocating", e))?;
            file.sync_all().map_err(|e| io_err("syncing", e))?;
        }
        Ok(Wal {
            file,
            state: Mutex::new(State {
                offset: 0,
                records: 0,
                appended: last,
                synced: last,
                syncing: false,
            }),
            synced_cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequence number the next record gets. Called under redb's write lock,
    /// so numbers follow commit order.
    pub(crate) fn next_lsn(&self) -> u64 {
        self.lock().appended + 1
    }

    /// Whether a record of `len` bytes should go to a checkpoint instead.
    pub(crate) fn wants_checkpoint(&self, len: usize) -> bool {
        let st = self.lock();
        st.offset + len as u64 > CAPACITY || st.records >= CHECKPOINT_RECORDS
    }

    /// Writes record `lsn` (not yet synced). Under redb's write lock.
    pub(crate) fn append(&self, lsn: u64, record: &[u8]) -> Result<()> {
        let mut st = self.lock();
        self.file
            .write_all_at(record, st.offset)
            .map_err(|e| io_err("writing", e))?;
        st.offset += record.len() as u64;
        st.records += 1;
        st.appended = lsn;
        Ok(())
    }

    /// After a durable redb commit of everything up to `lsn`: the log starts over.
    pub(crate) fn checkpointed(&self, lsn: u64) {
        let mut st = self.lock();
        st.offset = 0;
        st.records = 0;
        st.appended = lsn;
        st.synced = st.synced.max(lsn);
        drop(st);
        self.synced_cv.notify_all();
    }

    /// Returns once record `lsn` is durable, syncing when nobody else is.
    pub(crate) fn wait_synced(&self, lsn: u64) -> Result<()> {
        let mut st = self.lock();
        loop {
            if st.synced >= lsn {
                return Ok(());
            }
            if st.syncing {
                st = self.synced_cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            let target = st.appended;
            drop(st);
            let result = self.file.sync_data();
            st = self.lock();
            st.syncing = false;
            if result.is_ok() {
                st.synced = st.synced.max(target);
            }
            self.synced_cv.notify_all();
            result.map_err(|e| io_err("syncing", e))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: u8) -> Vec<Op> {
        vec![
            Op::Put {
                table: "containers".into(),
                key: format!("ns\0c{n}"),
                value: vec![n; 40],
            },
            Op::Delete {
                table: "images".into(),
                key: "ns\0x".into(),
            },
            Op::Counter {
                name: "snapshot".into(),
                value: u64::from(n),
            },
        ]
    }

    #[test]
    fn records_round_trip_and_torn_ones_are_refused() {
        let rec = encode(7, &ops(3));
        let (lsn, got, len) = decode(&rec).unwrap();
        assert_eq!((lsn, len), (7, rec.len()));
        assert_eq!(got, ops(3));
        assert!(decode(&rec[..rec.len() - 1]).is_none());
        let mut bad = rec.clone();
        bad[20] ^= 1;
        assert!(decode(&bad).is_none());
        assert!(decode(&[0u8; 64]).is_none());
        assert!(decode(&[0xff; 64]).is_none());
    }

    #[test]
    fn replay_returns_the_cycle_after_the_database_and_stops_at_stale_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let wal = Wal::open(&path, 0).unwrap();
        // First cycle: 1..=5.
        for lsn in 1..=5u8 {
            wal.append(lsn.into(), &encode(lsn.into(), &ops(lsn)))
                .unwrap();
        }
        wal.checkpointed(5);
        // Second cycle: 6 and 7 overwrite the start; records 3..5 of the first
        // cycle remain behind them.
        for lsn in 6..=7u8 {
            wal.append(lsn.into(), &encode(lsn.into(), &ops(lsn)))
                .unwrap();
        }
        wal.wait_synced(7).unwrap();
        let got = replay(&path, 5).unwrap();
        assert_eq!(
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![6, 7],
            "stale records of the first cycle are not replayed"
        );
        assert_eq!(got[1].1, ops(7));
        assert!(replay(&path, 7).unwrap().is_empty());
        assert_eq!(replay(&path, 6).unwrap().len(), 1);
        // A database that lacks records the log no longer has is an error.
        assert!(replay(&path, 2).is_err());
    }

    #[test]
    fn concurrent_waiters_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let wal = std::sync::Arc::new(Wal::open(&dir.path().join("wal"), 0).unwrap());
        let lock = std::sync::Arc::new(Mutex::new(()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (wal, lock) = (wal.clone(), lock.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let lsn = {
                            let _g = lock.lock().unwrap();
                            let lsn = wal.next_lsn();
                            wal.append(lsn, &encode(lsn, &ops(1))).unwrap();
                            lsn
                        };
                        wal.wait_synced(lsn).unwrap();
                        assert!(wal.lock().synced >= lsn);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(replay(&dir.path().join("wal"), 0).unwrap().len(), 400);
    }
}
