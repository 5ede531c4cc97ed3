//! Firecracker's balloon API: `PUT /balloon` before boot, `PATCH /balloon` for the
//! target, `GET /balloon` for the configuration, `GET|PATCH /balloon/statistics`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::ApiClient;
use super::config::json;
use crate::{BalloonConfig, BalloonStats, Error};

/// `PUT /balloon` and the answer of `GET /balloon`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct BalloonBody {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub stats_polling_interval_s: u32,
}

impl From<BalloonConfig> for BalloonBody {
    fn from(b: BalloonConfig) -> Self {
        BalloonBody {
            amount_mib: b.amount_mib,
            deflate_on_oom: b.deflate_on_oom,
            stats_polling_interval_s: b.stats_interval_s,
        }
    }
}

impl From<BalloonBody> for BalloonConfig {
    fn from(b: BalloonBody) -> Self {
        BalloonConfig {
            amount_mib: b.amount_mib,
            deflate_on_oom: b.deflate_on_oom,
            stats_interval_s: b.stats_polling_interval_s,
        }
    }
}

/// `PATCH /balloon`
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u32,
}

pub(crate) async fn configure(api: &ApiClient, b: BalloonConfig) -> Result<(), Error> {
    api.put("/balloon", &json(&BalloonBody::from(b)))
        .await
        .map(drop)
}

pub(crate) async fn get(api: &ApiClient) -> Result<BalloonConfig, Error> {
    let v = api.get_json("/balloon").await?;
    let body: BalloonBody = serde_json::from_value(v.clone())
        .map_err(|e| Error::Control(format!("GET /balloon: unexpected answer {v}: {e}")))?;
    Ok(body.into())
}

pub(crate) async fn update(api: &ApiClient, amount_mib: u32) -> Result<(), Error> {
    api.patch("/balloon", &json(&BalloonUpdate { amount_mib }))
        .await
        .map(drop)
}

pub(crate) async fn update_stats(api: &ApiClient, interval_s: u32) -> Result<(), Error> {
    api.patch(
        "/balloon/statistics",
        &json(&BalloonStatsUpdate {
            stats_polling_interval_s: interval_s,
        }),
    )
    .await
    .map(drop)
}

/// The fields of `GET /balloon/statistics` (those the guest did not report are absent).
pub(crate) fn parse_stats(v: &Value) -> BalloonStats {
    let f = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    BalloonStats {
        target_mib: f("target_mib"),
        actual_mib: f("actual_mib"),
        target_pages: f("target_pages"),
        actual_pages: f("actual_pages"),
        swap_in: f("swap_in"),
        swap_out: f("swap_out"),
        major_faults: f("major_faults"),
        minor_faults: f("minor_faults"),
        free_memory: f("free_memory"),
        total_memory: f("total_memory"),
        available_memory: f("available_memory"),
        disk_caches: f("disk_caches"),
        hugetlb_allocations: f("hugetlb_allocations"),
        hugetlb_failures: f("hugetlb_failures"),
    }
}

pub(crate) async fn stats(api: &ApiClient) -> Result<BalloonStats, Error> {
    Ok(parse_stats(&api.get_json("/balloon/statistics").await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let b = BalloonConfig {
            amount_mib: 64,
            deflate_on_oom: true,
            stats_interval_s: 2,
        };
        assert_eq!(
            json(&BalloonBody::from(b)),
            serde_json::json!({"amount_mib": 64, "deflate_on_oom": true,
                "stats_polling_interval_s": 2})
        );
        assert_eq!(
            json(&BalloonUpdate { amount_mib: 8 }),
            serde_json::json!({"amount_mib": 8})
        );
        assert_eq!(
            json(&BalloonStatsUpdate {
                stats_polling_interval_s: 0
            }),
            serde_json::json!({"stats_polling_interval_s": 0})
        );
        let back: BalloonConfig = serde_json::from_value::<BalloonBody>(
            serde_json::json!({"amount_mib": 64, "deflate_on_oom": true}),
        )
        .unwrap()
        .into();
        assert_eq!(back.stats_interval_s, 0);
        assert_eq!(back.amount_mib, 64);
    }

    #[test]
    fn statistics() {
        let s = parse_stats(
            &serde_json::json!({"target_pages": 256, "actual_pages": 128,
            "target_mib": 1, "actual_mib": 0, "free_memory": 99}),
        );
        assert_eq!(
            (s.target_pages, s.actual_pages, s.free_memory),
            (256, 128, 99)
        );
        assert_eq!(s.swap_in, 0);
    }
}
