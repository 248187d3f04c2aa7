//! What a replica carries besides its bytes: content headers, user metadata and tags, and the
//! digest that tells whether a replica already carries them.

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use md5::{Digest, Md5};
use std::collections::HashMap;

/// The object headers a replica must carry.
#[derive(Debug, Clone, Default)]
pub(super) struct Headers {
    pub(super) content_type: Option<String>,
    pub(super) cache_control: Option<String>,
    pub(super) content_disposition: Option<String>,
    pub(super) content_encoding: Option<String>,
    pub(super) content_language: Option<String>,
    pub(super) expires: Option<String>,
    pub(super) metadata: Option<HashMap<String, String>>,
    pub(super) storage_class: Option<String>,
}

impl Headers {
    pub(super) fn from_head(h: &HeadObjectOutput) -> Headers {
        Headers {
            content_type: h.content_type().map(str::to_string),
            cache_control: h.cache_control().map(str::to_string),
            content_disposition: h.content_disposition().map(str::to_string),
            content_encoding: h.content_encoding().map(str::to_string),
            content_language: h.content_language().map(str::to_string),
            expires: h.expires_string().map(str::to_string),
            metadata: h.metadata().cloned(),
            storage_class: h.storage_class().map(|s| s.as_str().to_string()),
        }
    }

    /// A digest of what a replica must carry besides its bytes: content headers, user metadata
    /// and tags, in a canonical form (header values trimmed, metadata keys in lower case, both
    /// sorted; Expires as a time where it parses). The storage class is left out: servers omit
    /// STANDARD.
    pub(super) fn digest(&self, tags: &[(String, String)]) -> String {
        use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
        let mut fields: Vec<String> = Vec::new();
        let text = |v: &Option<String>| v.as_deref().map(str::trim).unwrap_or_default().to_string();
        fields.push(text(&self.content_type));
        fields.push(text(&self.cache_control));
        fields.push(text(&self.content_disposition));
        fields.push(text(&self.content_encoding));
        fields.push(text(&self.content_language));
        let expires = text(&self.expires);
        fields.push(match DateTime::from_str(&expires, DateTimeFormat::HttpDate) {
            Ok(t) => t.secs().to_string(),
            Err(_) => expires,
        });
        let mut metadata: Vec<(String, String)> = self
            .metadata
            .iter()
            .flatten()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        metadata.sort();
        let mut tags = tags.to_vec();
        tags.sort();
        fields.push(metadata.len().to_string());
        fields.extend(metadata.into_iter().flat_map(|(k, v)| [k, v]));
        fields.push(tags.len().to_string());
        fields.extend(tags.into_iter().flat_map(|(k, v)| [k, v]));
        let mut md5 = Md5::new();
        for f in &fields {
            // Length-prefixed, so that no two different field lists hash alike.
            md5.update((f.len() as u64).to_le_bytes());
            md5.update(f.as_bytes());
        }
        hex::encode(md5.finalize())
    }
}

/// Tags in the form the `x-amz-tagging` header takes: `k1=v1&k2=v2`, URL-encoded.
pub(super) fn encode_tags(tags: &[(String, String)]) -> Option<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    if tags.is_empty() {
        return None;
    }
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    Some(
        tags.iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_digest_sees_headers_metadata_and_tags_not_their_spelling() {
        let meta = |k: &str, v: &str| Some(HashMap::from([(k.to_string(), v.to_string())]));
        let base = Headers {
            content_type: Some("text/plain".into()),
            expires: Some("Thu, 01 Jan 2026 00:00:00 GMT".into()),
            metadata: meta("Owner", "ann"),
            storage_class: Some("STANDARD_IA".into()),
            ..Default::default()
        };
        let tags = vec![("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())];
        let d = base.digest(&tags);
        let same = Headers {
            content_type: Some(" text/plain".into()),
            expires: Some("Thu, 01 Jan 2026 00:00:00 GMT ".into()),
            metadata: meta("owner", "ann"),
            storage_class: None,
            ..base.clone()
        };
        let mut reordered = tags.clone();
        reordered.reverse();
        assert_eq!(same.digest(&reordered), d);
        let other_meta = Headers {
            metadata: meta("owner", "bob"),
            ..base.clone()
        };
        assert_ne!(other_meta.digest(&tags), d);
        let other_type = Headers {
            content_type: Some("text/markdown".into()),
            ..base.clone()
        };
        assert_ne!(other_type.digest(&tags), d);
        assert_ne!(base.digest(&tags[..1]), d);
    }

    #[test]
    fn tags_are_url_encoded() {
        assert_eq!(encode_tags(&[]), None);
        assert_eq!(
            encode_tags(&[("a b".into(), "x&y=z".into()), ("k".into(), "v".into())]).as_deref(),
            Some("a%20b=x%26y%3Dz&k=v")
        );
    }
}
