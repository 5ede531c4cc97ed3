//! Where templates live: one directory per key under the store's directory,
//! `<key>/{memory,state,manifest.json,used}` beside the placeholders the template VM
//! booted with (`drives/`, `shared/`, `vm/`). The manifest is written last, so a
//! template without one (a build that died) is no template. Every use checks the
//! files against the manifest (sizes, change times, the state's digest), so a
//! truncated or rewritten template is rebuilt, never restored. A `<key>.lock`
//! flock serialises builds and removals of one key. Past the size cap, the least
//! recently used templates go.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::shape::{Shape, FORMAT};

/// Where templates live by default.
pub const DEFAULT_DIR: &str = "/var/lib/ember/templates";
/// Default cap of a store's size on disk.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// States up to this size are checked against their digest at every use; larger
/// ones (RAM inside) by size and change time.
const DIGEST_LIMIT: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("template {key} is unusable: {why}")]
    Invalid { key: String, why: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |e| StoreError::Io(what, e)
}

/// What `manifest.json` records of a finished template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub key: String,
    pub shape: Shape,
    pub created_unix: u64,
    pub build_ms: u64,
    /// Length and change time of `memory` (absent when RAM is in the state).
    pub memory: Option<(u64, i64)>,
    pub state_len: u64,
    pub state_ctime_ns: i64,
    pub state_sha256: String,
}

/// A usable template.
#[derive(Debug, Clone)]
pub struct Template {
    pub key: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Template {
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The RAM file (None: RAM is in the state).
    pub fn memory(&self) -> Option<PathBuf> {
        self.manifest.memory.map(|_| self.dir.join("memory"))
    }
}

/// One entry of [`TemplateStore::list`].
#[derive(Debug, Clone, Serialize)]
pub struct TemplateInfo {
    pub key: String,
    pub bytes: u64,
    pub created_unix: u64,
    pub last_used_unix: u64,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub jailed: bool,
    /// Empty when usable, else why not.
    pub problem: String,
}

/// A held build/removal lock of one key.
pub struct KeyLock(#[allow(dead_code)] Flock<File>);

#[derive(Debug, Clone)]
pub struct TemplateStore {
    dir: PathBuf,
    max_bytes: u64,
}

fn ctime_ns(m: &std::fs::Metadata) -> i64 {
    m.ctime() * 1_000_000_000 + m.ctime_nsec()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Bytes a directory tree takes on disk (allocated blocks: sparse files count what
/// they hold).
fn disk_usage(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

impl TemplateStore {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        TemplateStore {
            dir: dir.into(),
            max_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of template `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Takes the lock of `key`, waiting for its holder.
    pub async fn lock(&self, key: &str) -> Result<KeyLock, StoreError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let path = self.dir.join(format!("{key}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let lock = tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
            .await
            .map_err(|e| StoreError::Io("locking".into(), std::io::Error::other(e)))?
            .map_err(|(_, e)| StoreError::Io(format!("locking {}", path.display()), e.into()))?;
        Ok(KeyLock(lock))
    }

    /// The finished template of `shape`, checked: Ok(None) when there is none,
    /// Err(Invalid) when there is one that must not be used.
    pub fn lookup(&self, shape: &Shape) -> Result<Option<Template>, StoreError> {
        let key = shape.key();
        let dir = self.path(&key);
        let text = match std::fs::read(dir.join("manifest.json")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io(format!("reading {}", dir.display()), e)),
        };
        let invalid = |why: String| StoreError::Invalid {
            key: key.clone(),
            why,
        };
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| invalid(format!("its manifest does not parse: {e}")))?;
        if manifest.format != FORMAT || manifest.key != key || &manifest.shape != shape {
            return Err(invalid("its manifest is of another shape or format".into()));
        }
        let t = Template {
            key: key.clone(),
            dir,
            manifest,
        };
        t.check().map_err(invalid)?;
        let _ = std::fs::write(t.dir.join("used"), now_unix().to_string());
        Ok(Some(t))
    }

    /// Records a template whose files are complete in its directory.
    pub fn finish(&self, shape: &Shape, build_ms: u64) -> Result<Template, StoreError> {
        let key = shape.key();
        let dir = self.path(&key);
        let state = dir.join("state");
        let sm = std::fs::metadata(&state).map_err(io(format!("{}", state.display())))?;
        let memory = if shape.ram_in_file() {
            let path = dir.join("memory");
            let m = std::fs::metadata(&path).map_err(io(format!("{}", path.display())))?;
            Some((m.len(), ctime_ns(&m)))
        } else {
            None
        };
        let state_sha256 = if sm.len() <= DIGEST_LIMIT {
            sha256_file(&state).map_err(io(format!("reading {}", state.display())))?
        } else {
            String::new()
        };
        let manifest = Manifest {
            format: FORMAT,
            key: key.clone(),
            shape: shape.clone(),
            created_unix: now_unix(),
            build_ms,
            memory,
            state_len: sm.len(),
            state_ctime_ns: ctime_ns(&sm),
            state_sha256,
        };
        let tmp = dir.join("manifest.json.tmp");
        let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        std::fs::write(&tmp, bytes).map_err(io(format!("writing {}", tmp.display())))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("syncing {}", tmp.display())))?;
        std::fs::rename(&tmp, dir.join("manifest.json"))
            .map_err(io(format!("renaming {}", tmp.display())))?;
        let _ = std::fs::write(dir.join("used"), now_unix().to_string());
        Ok(Template { key, dir, manifest })
    }

    /// Removes the directory of `key` (the caller holds its lock).
    pub fn discard(&self, key: &str) -> Result<(), StoreError> {
        let dir = self.path(key);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io(format!("removing {}", dir.display()), e)),
        }
    }

    fn keys(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        keys.sort();
        keys
    }

    /// Every template directory, with what its manifest says (or why it is unusable).
    pub fn list(&self) -> Vec<TemplateInfo> {
        self.keys()
            .into_iter()
            .map(|key| {
                let dir = self.path(&key);
                let bytes = disk_usage(&dir);
                let last_used_unix = std::fs::read_to_string(dir.join("used"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                let parsed = std::fs::read(dir.join("manifest.json"))
                    .map_err(|_| "no manifest (an unfinished build)".to_string())
                    .and_then(|t| {
                        serde_json::from_slice::<Manifest>(&t)
                            .map_err(|e| format!("bad manifest: {e}"))
                    });
                match parsed {
                    Ok(m) => {
                        let problem = Template {
                            key: key.clone(),
                            dir: dir.clone(),
                            manifest: m.clone(),
                        }
                        .check()
                        .err()
                        .unwrap_or_default();
                        TemplateInfo {
                            key,
                            bytes,
                            created_unix: m.created_unix,
                            last_used_unix,
                            vcpus: m.shape.vcpus,
                            memory_mib: m.shape.memory_mib,
                            kernel: m.shape.kernel.path,
                            jailed: m.shape.jailed,
                            problem,
                        }
                    }
                    Err(problem) => TemplateInfo {
                        key,
                        bytes,
                        created_unix: 0,
                        last_used_unix,
                        vcpus: 0,
                        memory_mib: 0,
                        kernel: PathBuf::new(),
                        jailed: false,
                        problem,
                    },
                }
            })
            .collect()
    }

    /// Removes every template whose key starts with `prefix` (all with ""); returns
    /// their keys.
    pub async fn remove(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut gone = Vec::new();
        for key in self.keys().into_iter().filter(|k| k.starts_with(prefix)) {
            let _l = self.lock(&key).await?;
            self.discard(&key)?;
            let _ = std::fs::remove_file(self.dir.join(format!("{key}.lock")));
            gone.push(key);
        }
        Ok(gone)
    }

    /// Removes the least recently used templates (never `keep`) while the store is
    /// over its cap.
    pub async fn evict(&self, keep: &str) -> Result<Vec<String>, StoreError> {
        let mut all = self.list();
        let mut total: u64 = all.iter().map(|t| t.bytes).sum();
        all.sort_by_key(|t| t.last_used_unix);
        let mut gone = Vec::new();
        for t in all {
            if total <= self.max_bytes {
                break;
            }
            if t.key == keep {
                continue;
            }
            let _l = self.lock(&t.key).await?;
            self.discard(&t.key)?;
            total = total.saturating_sub(t.bytes);
            gone.push(t.key);
        }
        Ok(gone)
    }
}

impl Template {
    /// The files against the manifest: Err says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let m = &self.manifest;
        if let Some((len, ctime)) = m.memory {
            let path = self.dir.join("memory");
            let meta = std::fs::metadata(&path).map_err(|e| format!("its memory file: {e}"))?;
            if meta.len() != len {
                return Err(format!(
                    "its memory file holds {} bytes, not {len}",
                    meta.len()
                ));
            }
            if ctime_ns(&meta) != ctime {
                return Err("its memory file was changed after it was saved".into());
            }
        }
        let state = self.dir.join("state");
        let meta = std::fs::metadata(&state).map_err(|e| format!("its state file: {e}"))?;
        if meta.len() != m.state_len {
            return Err(format!(
                "its state file holds {} bytes, not {}",
                meta.len(),
                m.state_len
            ));
        }
        if ctime_ns(&meta) != m.state_ctime_ns {
            return Err("its state file was changed after it was saved".into());
        }
        if !m.state_sha256.is_empty() {
            let digest = sha256_file(&state).map_err(|e| format!("reading its state: {e}"))?;
            if digest != m.state_sha256 {
                return Err("its state file does not match its digest".into());
            }
        }
        Ok(())
    }
}
