//! The limits of substitution in one place: how planning walks the narinfos, how a NAR is
//! downloaded, and how staged paths are committed. Every figure here bounds something;
//! how the defaults were chosen is in bench/CACHE.md ("Substitution limits").

use std::time::Duration;

/// Bounds of one substitution, with their defaults from [`Limits::new`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Narinfo requests in flight at the same time while planning. Default 64: bounds the
    /// connections and memory of the walk, whatever the closure's width.
    pub(super) narinfo_concurrency: usize,
    /// Narinfos whose signatures the walk hands to the blocking pool at a time while
    /// requests are in flight. Default 64: a batch takes a few milliseconds, so verdicts
    /// are never held back long, and the walk wakes the pool once per batch.
    pub(super) check_batch: usize,
    /// The batch size once no narinfo is in flight (the tail of the walk). Default 16:
    /// smaller, so the last checks spread over the pool's threads.
    pub(super) check_tail: usize,
    /// How long the walk keeps polling for the next narinfo before its thread sleeps.
    /// Default 300 µs: on a near cache a round trip is shorter than a sleeping thread's
    /// wake-up; on a far one this is at most 300 µs of CPU per round trip.
    pub(super) walk_spin: Duration,
    /// Staged paths that make a commit worth its sync. Default 128.
    pub(super) commit_batch: usize,
    /// Paths started but not yet committed, per download job, and on top of them all:
    /// bounds the open install locks and staged trees. Defaults 4 and 256.
    pub(super) window_per_job: usize,
    pub(super) window_base: usize,
    /// Tries per cache for one NAR (the first and the retries). Default 3.
    pub(super) attempts: u32,
    /// NARs whose signed NarSize is at most this are fetched whole into memory before they
    /// are unpacked ([`crate::cache::ClientOptions::whole_nar_max`]); larger ones stream.
    pub(super) whole_nar_max: u64,
    /// NARs of at most this many bytes are unpacked on the runtime's thread, between its
    /// network events, instead of on the blocking pool. Default 16 KiB: a NAR this small
    /// holds at most a couple of hundred entries, so the runtime never stalls long.
    pub(super) inline_stage_max: u64,
    /// Compressed bytes allowed beyond the NarSize plus an eighth (see
    /// [`Limits::compressed_max`]). Default 1 MiB.
    pub(super) compressed_slack: u64,
}

impl Limits {
    pub(super) fn new(whole_nar_max: u64) -> Limits {
        Limits {
            narinfo_concurrency: 64,
            check_batch: 64,
            check_tail: 16,
            walk_spin: Duration::from_micros(300),
            commit_batch: 128,
            window_per_job: 4,
            window_base: 256,
            attempts: 3,
            whole_nar_max,
            inline_stage_max: 16 << 10,
            compressed_slack: 1 << 20,
        }
    }

    /// The most paths started but not yet committed with `jobs` downloads at a time.
    pub(super) fn window(&self, jobs: usize) -> usize {
        jobs * self.window_per_job + self.window_base
    }

    /// The most compressed bytes accepted for a NAR of `nar_size` bytes. Compression never
    /// makes real data much larger (the formats we read grow incompressible input by well
    /// under an eighth), so this bounds the memory of a whole fetch and ends an endless
    /// stream that decompresses to nothing.
    pub(super) fn compressed_max(&self, nar_size: u64) -> u64 {
        nar_size
            .saturating_add(nar_size / 8)
            .saturating_add(self.compressed_slack)
    }
}
