//! `crr diff`: compares the latest objects of a rule's scope on both sides, like `rclone check`.
//! An object is the same when size and ETag match, or when the destination's latest version is
//! the replica crr itself wrote of the source's latest version (multipart copies have ETags of
//! their own).

use crate::config::Rule;
use crate::s3::{Clients, S3};
use crate::store::Store;
use anyhow::Result;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct DiffReport {
    pub same: usize,
    pub missing: Vec<String>,
    pub different: Vec<(String, String)>,
    pub extra: Vec<String>,
}

impl DiffReport {
    pub fn matches(&self) -> bool {
        self.missing.is_empty() && self.different.is_empty() && self.extra.is_empty()
    }
}

struct Latest {
    version_id: String,
    size: u64,
    etag: String,
}

/// The latest live version of every object in the rule's scope (keys whose latest is a delete
/// marker are absent).
async fn latest(s3: &S3, bucket: &str, rule: &Rule) -> Result<BTreeMap<String, Latest>> {
    let mut out = BTreeMap::new();
    for prefix in rule.scan_prefixes() {
        let mut marker = None;
        loop {
            let page = s3.list_versions_page(bucket, &prefix, marker).await?;
            for e in page.entries {
                if e.is_latest && !e.delete_marker && rule.in_scope(&e.key) {
                    out.insert(
                        e.key,
                        Latest {
                            version_id: e.version_id,
                            size: e.size,
                            etag: e.etag,
                        },
                    );
                }
            }
            match page.next {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
    }
    Ok(out)
}

pub async fn diff(clients: &Clients, store: &Store, rule: &Rule) -> Result<DiffReport> {
    let src = latest(clients.get(&rule.source.endpoint)?, &rule.source.bucket, rule).await?;
    let dst = latest(clients.get(&rule.destination.endpoint)?, &rule.destination.bucket, rule).await?;
    let mut report = DiffReport::default();
    for (key, s) in &src {
        match dst.get(key) {
            None => report.missing.push(key.clone()),
            Some(d) => {
                let same_content = s.size == d.size && !s.etag.is_empty() && s.etag == d.etag;
                if same_content || store.is_our_replica(&rule.id, key, &s.version_id, &d.version_id)? {
                    report.same += 1;
                } else if s.size != d.size {
                    report.different.push((
                        key.clone(),
                        format!("size {} on the source, {} on the destination", s.size, d.size),
                    ));
                } else {
                    report.different.push((
                        key.clone(),
                        format!("ETag {} on the source, {} on the destination", s.etag, d.etag),
                    ));
                }
            }
        }
    }
    report.extra = dst.keys().filter(|k| !src.contains_key(*k)).cloned().collect();
    Ok(report)
}
