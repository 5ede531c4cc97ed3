//! The tc-redirect-tap model: an interface and a tap are joined by an ingress qdisc
//! on each with a match-all u32 filter whose action redirects every frame to the
//! other's egress. The interface keeps its addresses; its own stack never sees a frame
//! (ingress is redirected before it), so the guest answers for them.

use std::path::Path;

use super::{netns, NetError};

/// Redirects `a` ⇄ `b` in the namespace at `ns`.
pub fn connect(ns: &Path, a: &str, b: &str) -> Result<(), NetError> {
    for (from, to) in [(a, b), (b, a)] {
        let r = netns::run(ns, "tc", &["qdisc", "add", "dev", from, "ingress"]).and_then(|_| {
            netns::run(
                ns,
                "tc",
                &[
                    "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                    "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )
        });
        if let Err(e) = r {
            disconnect(ns, a);
            disconnect(ns, b);
            return Err(e);
        }
    }
    Ok(())
}

/// Removes the ingress qdisc of `dev` (and so its filters); an interface or qdisc
/// already gone is no error.
pub fn disconnect(ns: &Path, dev: &str) {
    if let Err(e) = netns::run(ns, "tc", &["qdisc", "del", "dev", dev, "ingress"]) {
        let m = e.to_string();
        if !(m.contains("Cannot find device")
            || m.contains("Invalid handle")
            || m.contains("No such file"))
        {
            tracing::warn!("removing the ingress qdisc of {dev}: {e}");
        }
    }
}

#[cfg(test)]
/// The ingress filters of `dev`, as `tc filter show` prints them (empty: none).
pub fn filters(ns: &Path, dev: &str) -> Result<String, NetError> {
    netns::run(ns, "tc", &["filter", "show", "dev", dev, "ingress"])
}
