//! The virtio-balloon device over QMP: `balloon` sets the guest's target memory
//! size, `query-balloon` reports its current size, and the device's QOM properties
//! `guest-stats` / `guest-stats-polling-interval` carry the driver's statistics.

use serde_json::{json, Value};

use super::cmdline::BALLOON_ID;
use super::Qmp;
use crate::{BalloonStats, Error};

const MIB: u64 = 1 << 20;
/// Balloon statistics count 4 KiB pages, as Firecracker reports them.
const PAGES_PER_MIB: u64 = 256;

fn qom_path() -> String {
    format!("/machine/peripheral/{BALLOON_ID}")
}

/// The guest memory size in bytes QEMU asks for when the balloon holds
/// `amount_mib` of `memory_mib`.
pub(super) fn target_bytes(memory_mib: u32, amount_mib: u32) -> Result<u64, Error> {
    if amount_mib >= memory_mib {
        return Err(Error::InvalidConfig(format!(
            "a balloon of {amount_mib} MiB leaves nothing of the guest's {memory_mib} MiB"
        )));
    }
    Ok(u64::from(memory_mib - amount_mib) * MIB)
}

pub(super) async fn set_target(qmp: &Qmp, memory_mib: u32, amount_mib: u32) -> Result<(), Error> {
    let value = target_bytes(memory_mib, amount_mib)?;
    qmp.execute("balloon", Some(json!({ "value": value })))
        .await
        .map(drop)
}

pub(super) async fn set_stats_interval(qmp: &Qmp, interval_s: u32) -> Result<(), Error> {
    qmp.execute(
        "qom-set",
        Some(json!({
            "path": qom_path(),
            "property": "guest-stats-polling-interval",
            "value": interval_s,
        })),
    )
    .await
    .map(drop)
}

/// The guest's memory size now, bytes (`query-balloon`'s `actual`).
async fn actual_bytes(qmp: &Qmp) -> Result<u64, Error> {
    let v = qmp.execute("query-balloon", None).await?;
    v.get("actual")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::Control(format!("query-balloon: no actual size in {v}")))
}

/// A statistic of `guest-stats`; QEMU reports one the driver did not send as -1
/// (which arrives as the largest u64).
fn stat(stats: &Value, name: &str) -> u64 {
    match stats.get(name).and_then(Value::as_u64) {
        Some(u64::MAX) | None => 0,
        Some(v) => v,
    }
}

/// Fills the driver's statistics (`guest-stats` object of the device) into `out`.
pub(super) fn fill_guest_stats(v: &Value, out: &mut BalloonStats) {
    let s = v.get("stats").cloned().unwrap_or(Value::Null);
    out.swap_in = stat(&s, "stat-swap-in");
    out.swap_out = stat(&s, "stat-swap-out");
    out.major_faults = stat(&s, "stat-major-faults");
    out.minor_faults = stat(&s, "stat-minor-faults");
    out.free_memory = stat(&s, "stat-free-memory");
    out.total_memory = stat(&s, "stat-total-memory");
    out.available_memory = stat(&s, "stat-available-memory");
    out.disk_caches = stat(&s, "stat-disk-caches");
    out.hugetlb_allocations = stat(&s, "stat-htlb-pgalloc");
    out.hugetlb_failures = stat(&s, "stat-htlb-pgfail");
}

pub(super) async fn stats(
    qmp: &Qmp,
    memory_mib: u32,
    target_mib: u32,
) -> Result<BalloonStats, Error> {
    let actual = actual_bytes(qmp).await?;
    let actual_mib = u64::from(memory_mib).saturating_sub(actual / MIB);
    let mut out = BalloonStats {
        target_mib: target_mib.into(),
        actual_mib,
        target_pages: u64::from(target_mib) * PAGES_PER_MIB,
        actual_pages: actual_mib * PAGES_PER_MIB,
        ..Default::default()
    };
    let v = qmp
        .execute(
            "qom-get",
            Some(json!({ "path": qom_path(), "property": "guest-stats" })),
        )
        .await?;
    fill_guest_stats(&v, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_what_the_guest_keeps() {
        assert_eq!(target_bytes(256, 64).unwrap(), 192 * MIB);
        assert_eq!(target_bytes(256, 0).unwrap(), 256 * MIB);
        assert!(matches!(
            target_bytes(256, 256),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn guest_stats_unknown_are_zero() {
        let v = json!({"stats": {"stat-free-memory": 1000, "stat-total-memory": 2000,
            "stat-swap-in": -1, "stat-htlb-pgfail": 18446744073709551615u64}, "last-update": 5});
        let mut s = BalloonStats::default();
        fill_guest_stats(&v, &mut s);
        assert_eq!((s.free_memory, s.total_memory, s.swap_in), (1000, 2000, 0));
        assert_eq!(s.hugetlb_failures, 0);
    }
}
