//! `containerd.services.leases.v1.Leases`, and the expiry of leases labelled
//! `containerd.io/gc.expire`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1 as wire;
use ember_metadata::db::Reader;
use ember_metadata::{Db, Lease, LeaseResource, LABEL_GC_EXPIRE};
use tonic::{Request, Response, Status};

use crate::daemon::Metadata;
use crate::grpc::leases::leases_server::{Leases, LeasesServer};
use crate::plugin::{InitError, Registration, GRPC, METADATA};
use crate::services::{blocking, filter, labels_in, labels_out, namespace, timestamp, GrpcService};

/// How often expired leases are looked for.
const EXPIRY_SWEEP: Duration = Duration::from_secs(30);

pub fn registration() -> Registration {
    Registration::new(GRPC, "leases", &[METADATA], |ctx| {
        let md: Arc<Metadata> = ctx.registry.first(METADATA).map_err(InitError::Failed)?;
        let db = md.db.clone();
        let gc = md.gc.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_SWEEP);
            loop {
                tick.tick().await;
                let db = db.clone();
                match tokio::task::spawn_blocking(move || expire(&db, SystemTime::now())).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "expiring leases"),
                    Err(e) => tracing::warn!(error = %e, "expiring leases"),
                    Ok(Ok(0)) => {}
                    Ok(Ok(_)) => gc.schedule(),
                }
            }
        });
        let service = Service { md };
        Ok(GrpcService::instance(move |r| {
            r.add_service(limited!(LeasesServer::new(service.clone())));
        }))
    })
}

/// Deletes the leases whose expiry label is in the past; returns how many.
pub fn expire(db: &Db, now: SystemTime) -> ember_metadata::Result<usize> {
    let expired: Vec<(String, String)> = db
        .view(|tx| tx.all_leases())?
        .into_iter()
        .filter(|(_, l)| {
            l.labels
                .get(LABEL_GC_EXPIRE)
                .and_then(|v| parse_rfc3339(v))
                .is_some_and(|t| t <= now)
        })
        .map(|(ns, l)| (ns, l.id))
        .collect();
    for (ns, id) in &expired {
        tracing::info!(namespace = %ns, lease = %id, "lease expired");
        match db.update(|tx| tx.delete_lease(ns, id)) {
            Ok(()) | Err(ember_metadata::Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(expired.len())
}

/// Parses an RFC 3339 time (`2006-01-02T15:04:05.999Z`, `...+02:00`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = digits.parse().ok()?;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        b'+' | b'-' if i + 6 == b.len() && b[i + 3] == b':' => {
            let sign = if b[i] == b'+' { 1 } else { -1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    // Days since the epoch of a civil date (proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hour * 3600 + min * 60 + sec - offset;
    if secs < 0 {
        return Some(UNIX_EPOCH);
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// An id for a lease created without one: the time and a few random bits.
fn random_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{nanos}-{}", &rand[..6])
}

#[derive(Clone)]
pub struct Service {
    md: Arc<Metadata>,
}

fn to_wire(l: &Lease) -> wire::Lease {
    wire::Lease {
        id: l.id.clone(),
        created_at: timestamp(l.created_at),
        labels: labels_out(&l.labels),
    }
}

fn resource_in(r: Option<wire::Resource>) -> Result<LeaseResource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resource is required"))?;
    Ok(LeaseResource {
        id: r.id,
        kind: r.r#type,
    })
}

#[tonic::async_trait]
impl Leases for Service {
    async fn create(
        &self,
        r: Request<wire::CreateRequest>,
    ) -> Result<Response<wire::CreateResponse>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let id = if r.id.is_empty() { random_id() } else { r.id };
        let lease = Lease {
            id,
            labels: labels_in(r.labels),
            created_at: UNIX_EPOCH,
        };
        let db = self.md.db.clone();
        let l = blocking(move || db.update(|tx| tx.create_lease(&ns, &lease))).await?;
        Ok(Response::new(wire::CreateResponse {
            lease: Some(to_wire(&l)),
        }))
    }

    async fn delete(&self, r: Request<wire::DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let (id, sync) = (r.id, r.sync);
        let db = self.md.db.clone();
        blocking(move || db.update(|tx| tx.delete_lease(&ns, &id))).await?;
        if sync {
            self.md.gc.run().await.map_err(crate::services::status)?;
        } else {
            self.md.gc.schedule();
        }
        Ok(Response::new(()))
    }

    async fn list(
        &self,
        r: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, Status> {
        let ns = namespace(&r)?;
        let f = filter(&r.into_inner().filters)?;
        let db = self.md.db.clone();
        let all = blocking(move || db.view(|tx| tx.list_leases(&ns, &f))).await?;
        Ok(Response::new(wire::ListResponse {
            leases: all.iter().map(to_wire).collect(),
        }))
    }

    async fn add_resource(
        &self,
        r: Request<wire::AddResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let res = resource_in(r.resource)?;
        let db = self.md.db.clone();
        blocking(move || db.update(|tx| tx.add_lease_resource(&ns, &r.id, &res))).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        r: Request<wire::DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&r)?;
        let r = r.into_inner();
        let res = resource_in(r.resource)?;
        let db = self.md.db.clone();
        blocking(move || db.update(|tx| tx.delete_lease_resource(&ns, &r.id, &res))).await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        r: Request<wire::ListResourcesRequest>,
    ) -> Result<Response<wire::ListResourcesResponse>, Status> {
        let ns = namespace(&r)?;
        let id = r.into_inner().id;
        let db = self.md.db.clone();
        let all = blocking(move || db.view(|tx| tx.list_lease_resources(&ns, &id))).await?;
        Ok(Response::new(wire::ListResourcesResponse {
            resources: all
                .into_iter()
                .map(|r| wire::Resource {
                    id: r.id,
                    r#type: r.kind,
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(t("2000-03-01T00:00:00Z"), Some(951868800.0));
        assert_eq!(t("2024-02-29T12:30:15.5Z"), Some(1709209815.5));
        assert_eq!(t("2024-02-29T14:30:15+02:00"), Some(1709209815.0));
        assert_eq!(t("2024-02-29T14:30:15"), None);
        assert_eq!(t("garbage"), None);
    }

    #[test]
    fn expiry() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("m.redb")).unwrap();
        let mk = |id: &str, expire: Option<&str>| Lease {
            id: id.into(),
            labels: expire
                .map(|e| [(LABEL_GC_EXPIRE.to_string(), e.to_string())].into())
                .unwrap_or_default(),
            created_at: UNIX_EPOCH,
        };
        db.update(|tx| {
            tx.create_lease("a", &mk("old", Some("2000-01-01T00:00:00Z")))?;
            tx.create_lease("a", &mk("new", Some("2999-01-01T00:00:00Z")))?;
            tx.create_lease("b", &mk("none", None))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(expire(&db, SystemTime::now()).unwrap(), 1);
        let left: Vec<_> = db
            .view(|tx| tx.all_leases())
            .unwrap()
            .into_iter()
            .map(|(_, l)| l.id)
            .collect();
        assert_eq!(left, ["new", "none"]);
    }
}
