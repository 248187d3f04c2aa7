//! Whether an endpoint's GetObject answers say when an object has no tags.
//!
//! S3 sends `x-amz-tagging-count` with GetObject and HeadObject when an object has tags, and
//! leaves it out when it has none, so a copy needs GetObjectTagging only when the count is
//! there and above zero: two requests per untagged object instead of three. A server that
//! never sends the count would lose tags that way, so until an endpoint has shown that it
//! sends the count (an answer with a count above zero), a copy whose answer has no count still
//! asks for the tags of the first [`CALIBRATE`] objects and of one in [`SAMPLE`] after that.
//! Tags found that way mean the endpoint does not report counts: from then on every copy from
//! it asks for its tags.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Objects without a count whose tags are always checked, per endpoint and process.
const CALIBRATE: u64 = 32;
/// After that, one in this many is checked, until the endpoint has sent a count.
const SAMPLE: u64 = 32;

#[derive(Debug, Default)]
pub struct TagCounts {
    /// An answer carried a count above zero: the server reports counts.
    reports: AtomicBool,
    /// Tags were found on an object whose answer carried no count.
    unreliable: AtomicBool,
    /// Answers without a count seen so far.
    absent: AtomicU64,
}

impl TagCounts {
    /// Whether the tags of an object whose GetObject carried `count` must be fetched.
    pub fn must_fetch(&self, count: Option<i32>) -> bool {
        match count {
            Some(n) => {
                if n > 0 {
                    self.reports.store(true, Ordering::Relaxed);
                }
                n > 0
            }
            None => {
                if self.unreliable.load(Ordering::Relaxed) {
                    return true;
                }
                let n = self.absent.fetch_add(1, Ordering::Relaxed);
                !self.reports.load(Ordering::Relaxed) && (n < CALIBRATE || n.is_multiple_of(SAMPLE))
            }
        }
    }

    /// What a fetch made for an answer without a count found: tags there mean the endpoint
    /// does not report counts. Returns true when that was learned just now.
    pub fn fetched_without_count(&self, tags: usize) -> bool {
        tags > 0 && !self.unreliable.swap(true, Ordering::Relaxed)
    }

    /// Whether the endpoint has been found not to report counts.
    pub fn is_unreliable(&self) -> bool {
        self.unreliable.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_decides_alone() {
        let t = TagCounts::default();
        assert!(!t.must_fetch(Some(0)));
        assert!(t.must_fetch(Some(3)));
    }

    #[test]
    fn answers_without_a_count_are_checked_until_the_server_shows_it_reports_counts() {
        let t = TagCounts::default();
        let checked = (0..CALIBRATE + 4 * SAMPLE).filter(|_| t.must_fetch(None)).count() as u64;
        assert_eq!(checked, CALIBRATE + 4, "every object at first, then one in {SAMPLE}");
        // A count above zero shows the server reports them: no count then means no tags.
        assert!(t.must_fetch(Some(1)));
        assert!((0..1000).all(|_| !t.must_fetch(None)));
    }

    #[test]
    fn tags_found_without_a_count_mean_every_object_is_checked() {
        let t = TagCounts::default();
        assert!(t.must_fetch(None));
        assert!(!t.fetched_without_count(0));
        assert!(t.fetched_without_count(2), "learned now");
        assert!(!t.fetched_without_count(2), "only once");
        assert!(t.is_unreliable());
        assert!((0..1000).all(|_| t.must_fetch(None)));
    }
}
