//! The address filter as a decoder's caller applies it at a TIP.PGD (perf's `pgd_ip` callback).
//!
//! A TIP.PGD says tracing stopped, not where: the hardware sends it at the first branch whose
//! target is outside the traced region, and a direct (or conditional) branch gives no other
//! packet. perf's decoder therefore walks from the last packet and, at each direct branch, asks
//! its caller whether the target is outside the region; the caller answers with the process
//! and the moment it knows of (for perf: the queue's current thread's maps). [`PgdFilter`] is
//! that question; the block decoder asks it only when one is given
//! ([`super::BlockDecoder::with_pgd_filter`]).

use super::errata::AddrFilter;
use super::image::Context;

/// Whether a branch to `ip` leaves the traced region, in the address space `ctx` names.
pub trait PgdFilter: Send + Sync {
    fn leaves(&self, ctx: &Context, ip: u64) -> bool;
}

/// Fixed ranges, the same in every context: outside them is out.
impl PgdFilter for AddrFilter {
    fn leaves(&self, _ctx: &Context, ip: u64) -> bool {
        !self.allows(ip)
    }
}

impl<F: Fn(&Context, u64) -> bool + Send + Sync> PgdFilter for F {
    fn leaves(&self, ctx: &Context, ip: u64) -> bool {
        self(ctx, ip)
    }
}
