//! Listings: pages of keys (ListObjectsV2) and of versions (ListObjectVersions), their keys
//! decoded to the bytes they name, a page the SDK cannot read taken from its text, and versions
//! put in the order they were written.

use super::*;

impl S3 {
    /// The page size to ask for now.
    fn page_size(&self) -> i32 {
        self.list_page.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a listing that asked for `asked` entries was refused for the page size (a
    /// server that takes no more than 1,000): then the standard size is used from now on, and
    /// the caller asks again.
    fn refused_page_size(&self, asked: i32, e: &S3Error) -> bool {
        if asked <= LIST_PAGE_STANDARD || e.status != Some(400) {
            return false;
        }
        self.list_page
            .store(LIST_PAGE_STANDARD, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(endpoint = %self.endpoint, "listings ask for {LIST_PAGE_STANDARD} entries a page: {asked} was refused ({})", e.message);
        true
    }

    /// One page of the keys of current objects (ListObjectsV2) under `prefix`: after
    /// `start_after` on the first request, then from `token`. Returns the keys and the token
    /// of the next page, if any.
    pub async fn list_keys_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), S3Error> {
        let out = loop {
            let size = self.page_size();
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .max_keys(size)
                .encoding_type(EncodingType::Url);
            if !prefix.is_empty() {
                req = req.prefix(prefix);
            }
            match &token {
                Some(t) => req = req.continuation_token(t),
                None => req = req.set_start_after(start_after.map(str::to_string)),
            }
            match req.send().await {
                Ok(out) => break out,
                Err(e) => {
                    let e = s3_error("ListObjectsV2", &format!("{}/{bucket}", self.endpoint), e);
                    if !self.refused_page_size(size, &e) {
                        return Err(e);
                    }
                }
            }
        };
        let decode = KeyDecoder::new(out.encoding_type(), "ListObjectsV2", &self.endpoint, bucket);
        let keys = out
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(|k| decode.key(k))
            .collect::<Result<_, _>>()?;
        let next = match (out.is_truncated().unwrap_or(false), out.next_continuation_token()) {
            (true, Some(t)) => Some(t.to_string()),
            (true, None) => {
                return Err(S3Error::new(format!(
                    "ListObjectsV2 {}/{bucket}: truncated listing without a continuation token",
                    self.endpoint
                )));
            }
            (false, _) => None,
        };
        Ok((keys, next))
    }

    /// One page of ListObjectVersions under `prefix`, from the given markers.
    pub async fn list_versions_page(
        &self,
        bucket: &str,
        prefix: &str,
        marker: Option<(String, String)>,
    ) -> Result<VersionPage, S3Error> {
        let out = loop {
            let size = self.page_size();
            let mut req = self
                .client
                .list_object_versions()
                .bucket(bucket)
                .max_keys(size)
                .encoding_type(EncodingType::Url);
            if !prefix.is_empty() {
                req = req.prefix(prefix);
            }
            if let Some((key, version)) = &marker {
                req = req.key_marker(key);
                if !version.is_empty() {
                    req = req.version_id_marker(version);
                }
            }
            match req.send().await {
                Ok(out) => break out,
                Err(e) => {
                    // A server that ignores encoding-type (moto 5.2 for this listing) writes a
                    // key with a control character raw into the XML, which the SDK refuses as a
                    // whole: one such key would stop the rule. The page is read from the raw
                    // body instead.
                    if let Some(raw) = e.raw_response().filter(|r| r.status().as_u16() == 200)
                        && let Some(body) = raw.body().bytes()
                        && let Some(page) = raw_versions_page(&String::from_utf8_lossy(body), &self.endpoint, bucket)
                    {
                        return page;
                    }
                    let e = s3_error("ListObjectVersions", &format!("{}/{bucket}", self.endpoint), e);
                    if !self.refused_page_size(size, &e) {
                        return Err(e);
                    }
                }
            }
        };
        let decode = KeyDecoder::new(out.encoding_type(), "ListObjectVersions", &self.endpoint, bucket);
        let mut entries = Vec::new();
        for (i, v) in out.versions().iter().enumerate() {
            entries.push(VersionEntry {
                key: decode.key(v.key().unwrap_or_default())?,
                version_id: v.version_id().unwrap_or("null").to_string(),
                is_latest: v.is_latest().unwrap_or(false),
                last_modified: v.last_modified().map(|t| t.secs()).unwrap_or(0),
                size: v.size().unwrap_or(0).max(0) as u64,
                etag: v.e_tag().unwrap_or_default().to_string(),
                delete_marker: false,
                list_index: i,
            });
        }
        for (i, d) in out.delete_markers().iter().enumerate() {
            entries.push(VersionEntry {
                key: decode.key(d.key().unwrap_or_default())?,
                version_id: d.version_id().unwrap_or("null").to_string(),
                is_latest: d.is_latest().unwrap_or(false),
                last_modified: d.last_modified().map(|t| t.secs()).unwrap_or(0),
                size: 0,
                etag: String::new(),
                delete_marker: true,
                list_index: i,
            });
        }
        let next = if out.is_truncated().unwrap_or(false) {
            match out.next_key_marker() {
                Some(k) => Some((
                    decode.key(k)?,
                    out.next_version_id_marker().unwrap_or_default().to_string(),
                )),
                None => {
                    return Err(S3Error::new(format!(
                        "ListObjectVersions {}/{bucket}: truncated listing without a next key marker",
                        self.endpoint
                    )));
                }
            }
        } else {
            None
        };
        Ok(VersionPage { entries, next })
    }
}

/// Turns the keys of a listing back into the bytes they name. Listings ask for
/// `encoding-type=url`: XML 1.0 cannot carry every character a key may hold (a key with U+0001
/// would make the whole page unreadable). A server that honours it says so in the answer, and
/// only then are keys decoded, as S3 clients do: `%XX` is a byte and `+` a space (a plus sign
/// itself arrives as `%2B`).
struct KeyDecoder<'a> {
    encoded: bool,
    operation: &'static str,
    endpoint: &'a str,
    bucket: &'a str,
}

impl<'a> KeyDecoder<'a> {
    fn new(encoding: Option<&EncodingType>, operation: &'static str, endpoint: &'a str, bucket: &'a str) -> Self {
        KeyDecoder {
            encoded: encoding == Some(&EncodingType::Url),
            operation,
            endpoint,
            bucket,
        }
    }

    fn key(&self, listed: &str) -> Result<String, S3Error> {
        if !self.encoded {
            return Ok(listed.to_string());
        }
        decode_listed_key(listed).ok_or_else(|| {
            S3Error::new(format!(
                "{} {}/{}: the listed key {listed:?} is not valid URL encoding of UTF-8",
                self.operation, self.endpoint, self.bucket
            ))
        })
    }
}

/// `%XX` is a byte, `+` a space; `None` if the bytes are not UTF-8.
pub fn decode_listed_key(listed: &str) -> Option<String> {
    let spaced = listed.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|k| k.into_owned())
}

/// A ListObjectVersions page read from its XML text without an XML parser: each `<Version>` and
/// `<DeleteMarker>` element in order, its fields unescaped, any character allowed (XML 1.0 forbids
/// most control characters, S3 keys do not). `None` if the text is not such a page.
fn raw_versions_page(xml: &str, endpoint: &str, bucket: &str) -> Option<Result<VersionPage, S3Error>> {
    if !xml.contains("<ListVersionsResult") {
        return None;
    }
    let encoding = (xml_element(xml, "EncodingType").as_deref() == Some("url")).then_some(EncodingType::Url);
    let decode = KeyDecoder::new(encoding.as_ref(), "ListObjectVersions", endpoint, bucket);
    let field = |el: &str, name: &str| raw_element(el, name).map(|t| xml_unescape(&t));
    let mut entries = Vec::new();
    for (tag, delete_marker) in [("Version", false), ("DeleteMarker", true)] {
        for (i, el) in raw_elements(xml, tag).into_iter().enumerate() {
            let key = match decode.key(&field(el, "Key")?) {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            let last_modified = field(el, "LastModified")
                .and_then(|t| {
                    aws_sdk_s3::primitives::DateTime::from_str(&t, aws_sdk_s3::primitives::DateTimeFormat::DateTime)
                        .ok()
                })
                .map(|t| t.secs())
                .unwrap_or(0);
            entries.push(VersionEntry {
                key,
                version_id: field(el, "VersionId").unwrap_or_else(|| "null".into()),
                is_latest: field(el, "IsLatest").as_deref() == Some("true"),
                last_modified,
                size: field(el, "Size").and_then(|t| t.parse().ok()).unwrap_or(0),
                etag: field(el, "ETag").unwrap_or_default(),
                delete_marker,
                list_index: i,
            });
        }
    }
    // The page's own fields come after its entries are cut out, so a key cannot fake them.
    let mut rest = xml.to_string();
    for tag in ["Version", "DeleteMarker"] {
        for el in raw_elements(xml, tag) {
            rest = rest.replacen(el, "", 1);
        }
    }
    let next = if field(&rest, "IsTruncated").as_deref() == Some("true") {
        let Some(k) = field(&rest, "NextKeyMarker") else {
            return Some(Err(S3Error::new(format!(
                "ListObjectVersions {endpoint}/{bucket}: truncated listing without a next key marker"
            ))));
        };
        let key = match decode.key(&k) {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        Some((key, field(&rest, "NextVersionIdMarker").unwrap_or_default()))
    } else {
        None
    };
    Some(Ok(VersionPage { entries, next }))
}

/// Every `<tag>…</tag>` element of `xml`, whole, in order.
fn raw_elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = xml[from..].find(&open).map(|s| s + from) {
        let Some(end) = xml[start..].find(&close).map(|e| e + start + close.len()) else {
            break;
        };
        out.push(&xml[start..end]);
        from = end;
    }
    out
}

/// The raw (still escaped) text of the first `<name>` element, untrimmed: a key's spaces count.
fn raw_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

/// XML text with its five entities and numeric character references replaced; a reference to
/// a character XML forbids is taken as the character (it is what a key holds).
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let entity = after.find(';').map(|semi| (&after[..semi], semi));
        let decoded = entity.and_then(|(name, semi)| {
            let c = match name {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => name
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| name.strip_prefix('#').map(|d| d.parse::<u32>()))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            }?;
            Some((c, semi))
        });
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of the first `<name>` element in a small XML document.
pub(super) fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim().to_string())
}

/// One version or delete marker from a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    /// Seconds since the epoch (many servers store whole seconds).
    pub last_modified: i64,
    pub size: u64,
    pub etag: String,
    pub delete_marker: bool,
    /// Position in its own list (versions or delete markers) of the page, newest first per key.
    pub list_index: usize,
}

pub struct VersionPage {
    pub entries: Vec<VersionEntry>,
    pub next: Option<(String, String)>,
}

/// Puts the versions and delete markers of one key in the order they were written.
///
/// Timestamps alone cannot order them: a put and a delete in the same second share a
/// timestamp. Each list is newest first, and the one entry marked latest is the newest.
pub fn chronological(entries: &mut [VersionEntry]) {
    entries.sort_by(|a, b| {
        a.last_modified
            .cmp(&b.last_modified)
            .then(a.is_latest.cmp(&b.is_latest))
            .then_with(|| {
                if a.delete_marker == b.delete_marker {
                    // Newest first within a list: a higher index is older.
                    b.list_index.cmp(&a.list_index)
                } else {
                    // Unknowable from the listing; versions first keeps the common
                    // "put, then delete" order within one second.
                    a.delete_marker.cmp(&b.delete_marker)
                }
            })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(v: &str, t: i64, latest: bool, dm: bool, idx: usize) -> VersionEntry {
        VersionEntry {
            key: "k".into(),
            version_id: v.into(),
            is_latest: latest,
            last_modified: t,
            size: 0,
            etag: String::new(),
            delete_marker: dm,
            list_index: idx,
        }
    }

    #[test]
    fn a_listing_the_sdk_cannot_read_is_read_from_its_text() {
        let xml = "<?xml version=\"1.0\"?><ListVersionsResult><Name>b</Name><IsTruncated>true</IsTruncated>\
            <Version><Key>ctl/\u{1}soh &amp; &lt;x&gt;</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest>\
            <LastModified>2026-11-24T05:42:24.000Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>7</Size></Version>\
            <Version><Key> sp </Key><VersionId>v1</VersionId><IsLatest>true</IsLatest><Size>0</Size></Version>\
            <DeleteMarker><Key>gone&#x1f;</Key><VersionId>d1</VersionId><IsLatest>true</IsLatest></DeleteMarker>\
            <NextKeyMarker>ctl/\u{2}</NextKeyMarker><NextVersionIdMarker>v9</NextVersionIdMarker></ListVersionsResult>";
        let page = raw_versions_page(xml, "gz", "b").unwrap().unwrap();
        let keys: Vec<(&str, &str, bool)> = page
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.version_id.as_str(), e.delete_marker))
            .collect();
        assert_eq!(
            keys,
            [
                ("ctl/\u{1}soh & <x>", "v2", false),
                (" sp ", "v1", false),
                ("gone\u{1f}", "d1", true)
            ]
        );
        assert_eq!(page.entries[0].etag, "\"abc\"");
        assert_eq!(page.entries[0].size, 7);
        assert_eq!(page.entries[0].last_modified, 1_795_498_944);
        assert_eq!(page.next, Some(("ctl/\u{2}".to_string(), "v9".to_string())));
        assert!(raw_versions_page("<Error/>", "gz", "b").is_none());
    }

    #[test]
    fn listed_keys_decode_to_their_bytes() {
        assert_eq!(decode_listed_key("a+b%2Bc").as_deref(), Some("a b+c"));
        assert_eq!(decode_listed_key("ctl%01%7F%0A").as_deref(), Some("ctl\u{1}\u{7f}\n"));
        assert_eq!(decode_listed_key("%2525").as_deref(), Some("%25"));
        assert_eq!(
            decode_listed_key("caf%C3%A9/cafe%CC%81").as_deref(),
            Some("caf\u{e9}/cafe\u{301}")
        );
        assert_eq!(decode_listed_key("%FF"), None);
    }

    #[test]
    fn same_second_put_then_delete() {
        // put v1, delete (d1), all in one second: the marker is latest.
        let mut list = vec![e("v1", 10, false, false, 0), e("d1", 10, true, true, 0)];
        chronological(&mut list);
        assert_eq!(
            list.iter().map(|x| x.version_id.as_str()).collect::<Vec<_>>(),
            ["v1", "d1"]
        );
    }

    #[test]
    fn same_second_delete_then_put() {
        let mut list = vec![
            e("v2", 10, true, false, 0),
            e("v1", 10, false, false, 1),
            e("d1", 10, false, true, 0),
        ];
        chronological(&mut list);
        assert_eq!(
            list.iter().map(|x| x.version_id.as_str()).collect::<Vec<_>>(),
            ["v1", "d1", "v2"]
        );
    }
}
