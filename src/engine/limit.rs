//! Bandwidth limits: a pacer per limit (global, and one per rule) that spaces bytes out so the
//! long-run rate never exceeds the limit. Each chunk reserves its time on a virtual clock; a
//! small burst allowance keeps the pace smooth without letting any 5-second window run over.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How far ahead of the pace a sender may run, in seconds of the limit's rate.
const BURST: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Limiter {
    bytes_per_sec: AtomicU64,
    next_free: Mutex<Option<Instant>>,
}

impl Limiter {
    /// `bytes_per_sec = 0` means no limit.
    pub fn new(bytes_per_sec: u64) -> Limiter {
        Limiter {
            bytes_per_sec: AtomicU64::new(bytes_per_sec),
            next_free: Mutex::new(None),
        }
    }

    pub fn rate(&self) -> u64 {
        self.bytes_per_sec.load(Ordering::Relaxed)
    }

    /// A new limit, for every copy that shares this limiter, from its next chunk on.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.bytes_per_sec.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Reserves `n` bytes and returns how long the sender should wait before sending more.
    pub fn reserve(&self, n: u64) -> Duration {
        let rate = self.rate();
        if rate == 0 || n == 0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let start = match *next {
            Some(t) if t > now => t,
            _ => now,
        };
        let cost = Duration::from_secs_f64(n as f64 / rate as f64);
        let free = start + cost;
        *next = Some(free);
        free.saturating_duration_since(now).saturating_sub(BURST)
    }
}

/// The longest wait any of the limits asks for.
pub fn reserve_all(limits: &[&Limiter], n: u64) -> Duration {
    limits.iter().map(|l| l.reserve(n)).max().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        assert_eq!(Limiter::new(0).reserve(1 << 30), Duration::ZERO);
    }

    #[test]
    fn waits_add_up_to_the_rate() {
        let l = Limiter::new(1000);
        let mut total = Duration::ZERO;
        for _ in 0..10 {
            total = l.reserve(500);
        }
        // 5000 bytes at 1000 B/s: the last chunk may go no sooner than ~5 s after the first.
        assert!(total >= Duration::from_millis(4900), "{total:?}");
        assert!(total <= Duration::from_millis(5000), "{total:?}");
    }
}
