//! The VM's memory balloon, over the VMM backend (`Vm::balloon_*`), in the
//! `Firecracker` service's terms.

use ember_ttrpc::{Code, Status};
use ember_vm_api::fc::{FirecrackerBalloonDevice, GetBalloonStatsResponse};

use super::{err, VmHost};

impl VmHost {
    /// Fails unless the running VM was booted with a balloon.
    fn require_balloon(&self) -> Result<(), Status> {
        match self.booted() {
            Some(b) if b.balloon.is_some() => Ok(()),
            Some(_) => Err(err(
                Code::FailedPrecondition,
                format!(
                    "VM {} has no balloon device (CreateVM.BalloonDevice)",
                    self.id
                ),
            )),
            None => self.require_up(),
        }
    }

    pub async fn balloon_config(&self) -> Result<FirecrackerBalloonDevice, Status> {
        self.require_balloon()?;
        let sb = self.running().await?;
        let vm = sb.as_ref().expect("running() checked").vm();
        let c = vm.balloon_config().await.map_err(|e| self.vmm_err(e))?;
        Ok(FirecrackerBalloonDevice {
            amount_mib: c.amount_mib.into(),
            deflate_on_oom: c.deflate_on_oom,
            stats_polling_intervals: c.stats_interval_s.into(),
        })
    }

    pub async fn balloon_update(&self, amount_mib: i64) -> Result<(), Status> {
        let amount = u32::try_from(amount_mib).map_err(|_| {
            err(
                Code::InvalidArgument,
                format!("AmountMib {amount_mib} is out of range"),
            )
        })?;
        self.require_balloon()?;
        let sb = self.running().await?;
        let vm = sb.as_ref().expect("running() checked").vm();
        vm.balloon_update(amount).await.map_err(|e| self.vmm_err(e))
    }

    pub async fn balloon_stats(&self) -> Result<GetBalloonStatsResponse, Status> {
        self.require_balloon()?;
        let sb = self.running().await?;
        let vm = sb.as_ref().expect("running() checked").vm();
        let s = vm.balloon_stats().await.map_err(|e| self.vmm_err(e))?;
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Ok(GetBalloonStatsResponse {
            actual_mib: i(s.actual_mib),
            actual_pages: i(s.actual_pages),
            available_memory: i(s.available_memory),
            disk_caches: i(s.disk_caches),
            free_memory: i(s.free_memory),
            hugetlb_allocations: i(s.hugetlb_allocations),
            hugetlb_failures: i(s.hugetlb_failures),
            major_faults: i(s.major_faults),
            minor_faults: i(s.minor_faults),
            swap_in: i(s.swap_in),
            swap_out: i(s.swap_out),
            target_mib: i(s.target_mib),
            target_pages: i(s.target_pages),
            total_memory: i(s.total_memory),
        })
    }

    pub async fn balloon_update_stats(&self, interval_s: i64) -> Result<(), Status> {
        let interval = u32::try_from(interval_s).map_err(|_| {
            err(
                Code::InvalidArgument,
                format!("StatsPollingIntervals {interval_s} is out of range"),
            )
        })?;
        self.require_balloon()?;
        let sb = self.running().await?;
        let vm = sb.as_ref().expect("running() checked").vm();
        vm.balloon_update_stats(interval)
            .await
            .map_err(|e| self.vmm_err(e))
    }

    fn vmm_err(&self, e: ember_vmm::Error) -> Status {
        match e {
            ember_vmm::Error::NoBalloon => err(
                Code::FailedPrecondition,
                format!("VM {} has no balloon device", self.id),
            ),
            ember_vmm::Error::InvalidConfig(why) => {
                err(Code::InvalidArgument, format!("VM {}: {why}", self.id))
            }
            ember_vmm::Error::Unsupported(what) => err(
                Code::FailedPrecondition,
                format!("VM {}: {what} is not supported by its VMM", self.id),
            ),
            other => err(Code::Internal, format!("VM {}: {other}", self.id)),
        }
    }
}
