//! Preflight: the checks that need S3 before a rule may be enabled. Both buckets must exist,
//! be reachable with the configured credentials, and have versioning Enabled. The checks that
//! need no network (regions, topology, prefixes, ids) already ran when the config was loaded.

use crate::config::{BucketRef, Overwrite, Rule};
use crate::s3::Clients;

/// A refusal: what is wrong with which rule and bucket, and what to do.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rule {:?}: {}", self.rule, self.message)
    }
}

/// Warnings that do not block, such as `overwrite = "always"`.
pub fn warnings(rule: &Rule) -> Vec<String> {
    let mut w = Vec::new();
    if rule.overwrite == Overwrite::Always {
        w.push(format!(
            "rule {:?}: overwrite = \"always\": a migration will overwrite objects of the same name in {}",
            rule.id, rule.destination
        ));
    }
    w
}

async fn check_bucket(clients: &Clients, rule: &Rule, role: &str, b: &BucketRef, out: &mut Vec<Refusal>) {
    let refuse = |message: String| Refusal {
        rule: rule.id.clone(),
        message,
    };
    let s3 = match clients.get(&b.endpoint) {
        Ok(s) => s,
        Err(e) => return out.push(refuse(e.message)),
    };
    if let Err(e) = s3.head_bucket(&b.bucket).await {
        let msg = if e.status == Some(404) || e.is_code("NoSuchBucket") || e.is_code("NotFound") {
            format!(
                "the {role} bucket {b} does not exist on endpoint {:?} (region {}): create it with versioning enabled, or fix the rule's `{role}`",
                b.endpoint, s3.region
            )
        } else if e.status == Some(403) {
            format!(
                "the {role} bucket {b} cannot be used with the configured credentials ({}): check the endpoint's profile or AWS_* variables and the bucket's policy",
                e.message
            )
        } else {
            format!(
                "the {role} bucket {b} cannot be reached: {}; check the endpoint's url and that the service runs",
                e.message
            )
        };
        return out.push(refuse(msg));
    }
    match s3.versioning(&b.bucket).await {
        Ok(status) if status == "Enabled" => {}
        Ok(status) => out.push(refuse(format!(
            "versioning is {} on the {role} bucket {b}; it must be Enabled on both buckets: enable it in the provider's console or with `aws s3api put-bucket-versioning --bucket {} --versioning-configuration Status=Enabled`",
            if status.is_empty() { "not enabled".to_string() } else { format!("{status:?}") },
            b.bucket
        ))),
        Err(e) => out.push(refuse(format!("cannot read versioning of the {role} bucket {b}: {}", e.message))),
    }
}

/// Checks one rule against the real buckets, both at once (they are often regions apart).
pub async fn check_rule(clients: &Clients, rule: &Rule) -> Vec<Refusal> {
    let (mut source, mut destination) = (Vec::new(), Vec::new());
    tokio::join!(
        check_bucket(clients, rule, "source", &rule.source, &mut source),
        check_bucket(clients, rule, "destination", &rule.destination, &mut destination),
    );
    source.append(&mut destination);
    source
}
