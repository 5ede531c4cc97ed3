//! A clone's own identity: a VM restored from a template starts with the template's
//! random number generator state, hostname and clock, so before anything runs in it
//! the host hands it fresh entropy (credited to the input pool, then a forced reseed
//! of the kernel's generator), its hostname and the time. A template guest also
//! waits for this call to mount its shared directory.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use ember_agent_api::{SetIdentityRequest, IDENTITY_SEED_MAX, IDENTITY_SEED_MIN};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// `BLKFLSBUF`: `_IO(0x12, 97)`.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Set once the shared directory was mounted (at boot, or by the first request
/// that needs it); the lock is held while it is being mounted, so a concurrent
/// request waits for the mount instead of going on without it.
static SHARED_DONE: Mutex<bool> = Mutex::new(false);

/// Checks a request before anything is changed.
pub fn check(req: &SetIdentityRequest) -> Result<(), String> {
    if !(IDENTITY_SEED_MIN..=IDENTITY_SEED_MAX).contains(&req.seed.len()) {
        return Err(format!(
            "the seed must be {IDENTITY_SEED_MIN} to {IDENTITY_SEED_MAX} bytes, not {}",
            req.seed.len()
        ));
    }
    if req.hostname.len() > 64
        || !req
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "hostname {:?} must be at most 64 characters of [A-Za-z0-9.-]",
            req.hostname
        ));
    }
    if req.unix_ns < 0 {
        return Err("the clock cannot be set before the epoch".into());
    }
    Ok(())
}

/// Mixes `seed` into the kernel's input pool, crediting all of its bits, and makes
/// the generator reseed from it now.
pub fn reseed(seed: &[u8]) -> io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + seed.len().div_ceil(4) * 4);
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes follow its
    // two ints; `info` holds exactly that and lives across the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    crate::sys::check(r)?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) };
    crate::sys::check(r)?;
    Ok(())
}

/// Applies a checked request as PID 1 of a guest. Returns whether the shared
/// directory is mounted.
pub fn apply(req: &SetIdentityRequest) -> io::Result<bool> {
    let t0 = std::time::Instant::now();
    reseed(&req.seed)?;
    let reseeded = t0.elapsed();
    flush_block_caches();
    let flushed = t0.elapsed();
    if !req.hostname.is_empty() {
        nix::unistd::sethostname(&req.hostname)?;
    }
    if req.unix_ns > 0 {
        crate::sys::set_clock(req.unix_ns)?;
    }
    // The shared directory is mounted when a container first needs it (9p costs a
    // tenth of a second under emulation, and most containers bring no volumes).
    let mounted = *SHARED_DONE.lock().unwrap();
    tracing::info!(
        reseed_us = reseeded.as_micros() as u64,
        flush_us = (flushed - reseeded).as_micros() as u64,
        total_us = t0.elapsed().as_micros() as u64,
        "identity set"
    );
    Ok(mounted)
}

/// Drops what the kernel cached of every virtio disk: a clone's disks are its own
/// files, while its page cache still holds what the template's kernel read of the
/// placeholders (the partition scan at boot).
fn flush_block_caches() {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        let dev = format!("/dev/{name}");
        match std::fs::File::open(&dev) {
            Ok(f) => {
                // SAFETY: BLKFLSBUF takes no argument and touches no user memory.
                let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) };
                if let Err(e) = crate::sys::check(r) {
                    tracing::warn!("flushing the cache of {dev}: {e}");
                }
            }
            Err(e) => tracing::warn!("opening {dev}: {e}"),
        }
    }
}

/// Mounts the shared directory for a request that names a guest path under it
/// (`SHARED_GUEST_DIR`), unless that was done.
pub fn ensure_shared_for(paths: &[&[u8]]) -> Result<(), String> {
    if *SHARED_DONE.lock().unwrap() {
        return Ok(());
    }
    let dir = ember_agent_api::SHARED_GUEST_DIR.as_bytes();
    let named = paths.iter().any(|p| p.windows(dir.len()).any(|w| w == dir));
    if named && !mount_shared_once() {
        return Err(format!(
            "the shared directory {} could not be mounted",
            ember_agent_api::SHARED_GUEST_DIR
        ));
    }
    Ok(())
}

/// Mounts the shared directory unless that was done; true when it is mounted or
/// the VM has none.
pub fn mount_shared_once() -> bool {
    let mut done = SHARED_DONE.lock().unwrap();
    if !*done {
        *done = crate::init::mount_shared_dir();
    }
    *done
}

/// The kernel's boot id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(seed: usize, hostname: &str, unix_ns: i64) -> SetIdentityRequest {
        SetIdentityRequest {
            seed: vec![7; seed],
            hostname: hostname.into(),
            unix_ns,
        }
    }

    #[test]
    fn only_requests_naming_the_shared_dir_need_it() {
        // Nothing here names the shared directory: no mount is tried.
        assert!(ensure_shared_for(&[b"{\"mounts\":[]}", b"/run/ember/files/x"]).is_ok());
    }

    #[test]
    fn requests_are_checked() {
        assert!(check(&req(64, "web-1.example", 1)).is_ok());
        assert!(check(&req(32, "", 0)).is_ok());
        assert!(check(&req(31, "", 0)).unwrap_err().contains("32 to 4096"));
        assert!(check(&req(4097, "", 0)).is_err());
        assert!(check(&req(64, "bad name", 0))
            .unwrap_err()
            .contains("hostname"));
        assert!(check(&req(64, &"a".repeat(65), 0)).is_err());
        assert!(check(&req(64, "x", -1)).unwrap_err().contains("epoch"));
    }
}
