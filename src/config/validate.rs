//! Checks on the configuration that need no network: ids, endpoints, regions and the topology
//! rules of DESIGN section 3 (no chains, one partner bucket, whole-bucket rules alone, no
//! overlapping prefixes, at most 10 prefixes). Preflight adds the checks that need S3.

use super::{Config, ConfigError, Locator, RawEndpoint, RawRule};
use std::collections::HashMap;
use toml::Spanned;

pub const MAX_PREFIXES: usize = 10;

pub fn bucket_name_problem(name: &str) -> Result<(), String> {
    if name.len() < 3 || name.len() > 63 {
        return Err("a bucket name has 3 to 63 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err("a bucket name uses only lowercase letters, digits, '-' and '.'".into());
    }
    Ok(())
}

fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("the rule id is empty: give every rule a unique id".into());
    }
    if id.len() > 255 {
        let start: String = id.chars().take(20).collect();
        return Some(format!(
            "rule id {start:?}… is {} bytes long: an id has at most 255",
            id.len()
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Some(format!("rule id {id:?} may use only letters, digits, '.', '_' and '-'"));
    }
    None
}

pub(super) fn check_static(
    config: &Config,
    raw_endpoints: &[Spanned<RawEndpoint>],
    raw_rules: &[Spanned<RawRule>],
    loc: &Locator,
    errors: &mut Vec<ConfigError>,
) {
    // Endpoints: unique names, a region each.
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, e) in raw_endpoints.iter().enumerate() {
        let r = e.get_ref();
        let name = r.name.get_ref().as_str();
        if name.is_empty() || name.contains('/') {
            errors.push(loc.at(
                r.name.span(),
                format!("endpoint name {name:?} must be non-empty and contain no '/'"),
            ));
        }
        if r.region.get_ref().trim().is_empty() {
            errors.push(loc.at(
                r.region.span(),
                format!("endpoint {name:?} needs a region, e.g. \"ap-guangzhou\""),
            ));
        }
        if let Some(first) = names.insert(name, i) {
            let _ = first;
            errors.push(loc.at(
                r.name.span(),
                format!("endpoint name {name:?} is used twice: endpoint names must be unique"),
            ));
        }
    }

    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, (rule, raw)) in config.rules.iter().zip(raw_rules).enumerate() {
        let raw = raw.get_ref();
        let id = rule.id.as_str();
        if let Some(p) = id_problem(id) {
            errors.push(loc.at(raw.id.span(), p));
        }
        if let Some(first) = ids.insert(id, i) {
            errors.push(loc.at(
                raw.id.span(),
                format!(
                    "rule {id:?}: duplicate id (also used by the rule on line {}): give each rule a unique id",
                    config.rules[first].line
                ),
            ));
        }
        // Endpoints and regions.
        let src_ep = config.endpoint(&rule.source.endpoint);
        let dst_ep = config.endpoint(&rule.destination.endpoint);
        for (ep, r, span) in [
            (src_ep, &rule.source, raw.source.span()),
            (dst_ep, &rule.destination, raw.destination.span()),
        ] {
            if ep.is_none() && !r.endpoint.is_empty() {
                let known: Vec<&str> = config.endpoints.iter().map(|e| e.name.as_str()).collect();
                errors.push(loc.at(
                    span,
                    format!(
                        "rule {id:?}: unknown endpoint {:?} in {r}: define it in an [[endpoint]] table (known endpoints: {})",
                        r.endpoint,
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                ));
            }
        }
        if let (Some(s), Some(d)) = (src_ep, dst_ep)
            && s.region == d.region
        {
            errors.push(loc.at(
                raw.destination.span(),
                format!(
                    "rule {id:?}: source {} and destination {} are both in region {:?}: cross-region replication needs two different regions; pick a destination bucket on an endpoint in another region",
                    rule.source, rule.destination, s.region
                ),
            ));
        }
        // Prefixes.
        if let Some(p) = &raw.prefixes {
            if p.get_ref().len() > MAX_PREFIXES {
                errors.push(loc.at(
                    p.span(),
                    format!(
                        "rule {id:?}: {} prefixes on bucket {}: at most {MAX_PREFIXES} are allowed; split the rule or use a shorter common prefix",
                        p.get_ref().len(),
                        rule.source
                    ),
                ));
            }
            for (j, a) in p.get_ref().iter().enumerate() {
                if a.get_ref().is_empty() {
                    errors.push(loc.at(
                        a.span(),
                        format!(
                            "rule {id:?}: an empty prefix in the list for bucket {}: remove it, or omit `prefixes` to replicate the whole bucket",
                            rule.source
                        ),
                    ));
                }
                for b in &p.get_ref()[..j] {
                    if !a.get_ref().is_empty() && !b.get_ref().is_empty() && overlaps(a.get_ref(), b.get_ref()) {
                        errors.push(loc.at(
                            a.span(),
                            format!(
                                "rule {id:?}: prefixes {:?} and {:?} overlap on bucket {}: keep only the shorter one",
                                b.get_ref(),
                                a.get_ref(),
                                rule.source
                            ),
                        ));
                    }
                }
            }
        }
    }

    // Topology between rules.
    for (i, a) in config.rules.iter().enumerate() {
        let raw_a = raw_rules[i].get_ref();
        for b in &config.rules[..i] {
            if a.source.endpoint.is_empty() || b.source.endpoint.is_empty() {
                continue;
            }
            if a.source == b.source && a.destination != b.destination {
                errors.push(loc.at(
                    raw_a.destination.span(),
                    format!(
                        "rule {:?}: source bucket {} already replicates to {} (rule {:?}); a source bucket has one destination bucket: point this rule at {} or remove one rule",
                        a.id, a.source, b.destination, b.id, b.destination
                    ),
                ));
            }
            if a.destination == b.destination && a.source != b.source {
                errors.push(loc.at(
                    raw_a.source.span(),
                    format!(
                        "rule {:?}: destination bucket {} already receives from {} (rule {:?}); a destination bucket has one source bucket: use another destination bucket",
                        a.id, a.destination, b.source, b.id
                    ),
                ));
            }
            if a.source == b.source {
                if a.prefixes.is_empty() || b.prefixes.is_empty() {
                    let whole = if a.prefixes.is_empty() { a } else { b };
                    errors.push(loc.at(
                        raw_a.id.span(),
                        format!(
                            "rule {:?}: rule {:?} replicates the whole bucket {}, so no other rule may use that source bucket (rules {:?} and {:?}): give the whole-bucket rule prefixes or remove one rule",
                            a.id, whole.id, a.source, b.id, a.id
                        ),
                    ));
                } else {
                    for pa in &a.prefixes {
                        for pb in &b.prefixes {
                            if !pa.is_empty() && !pb.is_empty() && overlaps(pa, pb) {
                                errors.push(loc.at(
                                    raw_a.prefixes.as_ref().map(|p| p.span()).unwrap_or(raw_a.id.span()),
                                    format!(
                                        "rule {:?}: prefix {pa:?} overlaps prefix {pb:?} of rule {:?} on bucket {}: prefixes of rules on one bucket must not overlap",
                                        a.id, b.id, a.source
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        // Chains: this rule's destination is another rule's source, or the reverse.
        for b in &config.rules {
            if std::ptr::eq(a, b) || a.destination.endpoint.is_empty() {
                continue;
            }
            if a.destination == b.source {
                errors.push(loc.at(
                    raw_a.destination.span(),
                    format!(
                        "rule {:?}: bucket {} is the destination of rule {:?} and the source of rule {:?}; chains are not allowed (replicas are not replicated again): replicate from the original source instead",
                        a.id, a.destination, a.id, b.id
                    ),
                ));
            }
        }
        if a.source == a.destination && !a.source.endpoint.is_empty() {
            errors.push(loc.at(
                raw_a.destination.span(),
                format!(
                    "rule {:?}: source and destination are the same bucket {}",
                    a.id, a.source
                ),
            ));
        }
    }
}

/// Two prefixes overlap when one starts with the other.
pub fn overlaps(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn errs(rules: &str) -> String {
        let text = format!(
            "[[endpoint]]\nname = \"gz\"\nregion = \"ap-guangzhou\"\nurl = \"http://127.0.0.1:1\"\n\n[[endpoint]]\nname = \"sh\"\nregion = \"ap-shanghai\"\nurl = \"http://127.0.0.1:2\"\n\n[[endpoint]]\nname = \"bj\"\nregion = \"ap-beijing\"\nurl = \"http://127.0.0.1:3\"\n{rules}"
        );
        match super::super::parse(Path::new("c.toml"), &text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    fn rule(id: &str, src: &str, dst: &str, prefixes: &str) -> String {
        format!("\n[[rule]]\nid = \"{id}\"\nsource = \"{src}\"\ndestination = \"{dst}\"\nprefixes = {prefixes}\n")
    }

    #[test]
    fn good_pair_passes() {
        assert_eq!(
            errs(&(rule("a", "gz/one", "sh/two", "[\"x/\"]") + &rule("b", "gz/one", "sh/two", "[\"y/\"]"))),
            ""
        );
    }

    #[test]
    fn refusals() {
        let chain = errs(&(rule("a", "gz/one", "sh/two", "[]") + &rule("b", "sh/two", "bj/three", "[]")));
        assert!(chain.contains("chains"), "{chain}");
        let two_dst = errs(&(rule("a", "gz/one", "sh/two", "[\"x/\"]") + &rule("b", "gz/one", "bj/three", "[\"y/\"]")));
        assert!(two_dst.contains("one destination bucket"), "{two_dst}");
        let two_src = errs(&(rule("a", "gz/one", "sh/two", "[]") + &rule("b", "bj/three", "sh/two", "[]")));
        assert!(two_src.contains("one source bucket"), "{two_src}");
        let whole = errs(&(rule("a", "gz/one", "sh/two", "[]") + &rule("b", "gz/one", "sh/two", "[\"y/\"]")));
        assert!(whole.contains("whole bucket"), "{whole}");
        let overlap =
            errs(&(rule("a", "gz/one", "sh/two", "[\"logs/\"]") + &rule("b", "gz/one", "sh/two", "[\"logs/2024/\"]")));
        assert!(overlap.contains("overlaps"), "{overlap}");
        let many: Vec<String> = (0..11).map(|i| format!("\"p{i}/\"")).collect();
        let eleven = errs(&rule("a", "gz/one", "sh/two", &format!("[{}]", many.join(", "))));
        assert!(eleven.contains("at most 10"), "{eleven}");
        let empty = errs(&rule("a", "gz/one", "sh/two", "[\"\"]"));
        assert!(empty.contains("empty prefix"), "{empty}");
        let dup = errs(&(rule("a", "gz/one", "sh/two", "[\"x/\"]") + &rule("a", "gz/one", "sh/two", "[\"y/\"]")));
        assert!(dup.contains("duplicate id"), "{dup}");
        let unknown = errs(&rule("a", "zz/one", "sh/two", "[]"));
        assert!(unknown.contains("unknown endpoint \"zz\""), "{unknown}");
        let same_region = errs(&rule("a", "gz/one", "gz/two", "[]"));
        assert!(same_region.contains("different regions"), "{same_region}");
    }
}
