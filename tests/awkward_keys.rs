//! Object keys of every awkward kind replicate byte-exact between two real servers (issue 9,
//! hostile input): unicode in several scripts and in both normalisation forms (NFC and NFD of
//! one text are two keys), spaces, `+ % # ? & = \`, leading, trailing and doubled slashes,
//! `../`, control characters, and keys of 1,024 UTF-8 bytes (the S3 limit); with zero-byte
//! objects, 2 KiB of user metadata and the maximum of 10 tags.
//!
//! Each test runs one pair of servers (SeaweedFS as the source and moto as the destination, and
//! the reverse), both by real-time replication (written after the enable point, then
//! `crr run --once`) and by a migration (written before a `historical = true` rule). The
//! destination must then hold exactly the source's set of keys, byte for byte, and each
//! object's bytes, Content-Type, user metadata and tags. Every key is first written to a
//! scratch bucket on both servers: a key with a control character or a `.`/`..` segment that a
//! server refuses there is left out with a note (any other refusal fails the test), and so is a
//! key a server stores under another name or cannot give back (SeaweedFS, for one, collapses
//! slashes), found by listing and reading it back. moto to moto runs every key that way.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::EncodingType;
use common::*;

const RT_SRC: &str = "rt-src";
const RT_DST: &str = "rt-dst";
const MIG_SRC: &str = "mig-src";
const MIG_DST: &str = "mig-dst";

/// The S3 limit on a key's length, in UTF-8 bytes.
const MAX_KEY: usize = 1024;
/// The S3 limit on the user metadata of an object, keys and values in UTF-8 bytes.
const MAX_METADATA: usize = 2048;
/// The S3 limit on the tags of an object.
const MAX_TAGS: usize = 10;

/// One object to write, and whether its key is of a kind a server may refuse without failing
/// the test: a control character, or a `.` or `..` path segment.
#[derive(Clone, Debug)]
struct Obj {
    key: String,
    body: Vec<u8>,
    content_type: String,
    metadata: Vec<(String, String)>,
    tags: Vec<(String, String)>,
    may_refuse: bool,
}

/// `prefix` then `unit` as often as it fits, then `x` up to exactly `MAX_KEY` bytes.
fn full_length(prefix: &str, unit: &str) -> String {
    let mut k = prefix.to_string();
    while k.len() + unit.len() <= MAX_KEY {
        k.push_str(unit);
    }
    while k.len() < MAX_KEY {
        k.push('x');
    }
    assert_eq!(k.len(), MAX_KEY, "{k}");
    k
}

fn awkward_keys() -> Vec<(String, bool)> {
    let plain: Vec<String> = [
        // Scripts.
        "unicode/日本語のファイル名.txt",
        "unicode/中文文件 名",
        "unicode/한국어 파일",
        "unicode/Ελληνικά",
        "unicode/русский файл",
        "unicode/עברית",
        "unicode/العربية",
        "unicode/हिन्दी",
        "unicode/ไทย",
        "unicode/emoji 😀🚀👩‍👩‍👧",
        "unicode/zero\u{200b}width",
        "unicode/bom\u{feff}inside",
        "unicode/rtl\u{202e}override",
        "unicode/fullwidth／slash",
        "unicode/\u{a0}nbsp\u{3000}ideographic space",
        // One text in two normalisation forms: two keys.
        "norm/caf\u{e9}",
        "norm/cafe\u{301}",
        "norm/\u{d55c}\u{ae00}",
        "norm/\u{1112}\u{1161}\u{11ab}\u{1100}\u{1173}\u{11af}",
        "norm/\u{c5}ngstr\u{f6}m",
        "norm/A\u{30a}ngstro\u{308}m",
        "norm/\u{212b}",
        // Spaces.
        "space/a b",
        "space/ leading",
        "space/trailing ",
        "space/double  space",
        " starts with a space",
        // Characters with a meaning in URLs, signatures, XML or shells.
        "chars/plus+sign",
        "chars/a+b c",
        "chars/100%",
        "chars/%",
        "chars/%20",
        "chars/%2F%2f",
        "chars/%25",
        "chars/%252F",
        "chars/%zz",
        "chars/hash#frag",
        "chars/q?x=1&y=2",
        "chars/amp&amp;",
        "chars/eq=val",
        "chars/back\\slash",
        "chars/all + % # ? & = \\",
        "chars/<xml>&'\"",
        "chars/~tilde!*()'",
        "chars/[brackets]{braces}",
        "chars/semi;colon:comma,",
        "chars/$dollar@at",
        "chars/`backtick^caret|pipe",
        // Slashes and dots.
        "/leading-slash",
        "//two-leading-slashes",
        "slash/trailing/",
        "slash/double//slash",
        "slash/triple///x",
        "slash//",
        "../escape",
        "dots/../../etc/passwd",
        "dots/./here",
        "dots/...",
        "dots/..hidden",
        "dots/trailing.",
        // Zero-byte and empty-looking.
        "empty/zero-byte",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        full_length("long/ascii/", "k"),
        full_length("long/cjk/", "文"),
        full_length("long/emoji/", "😀"),
        full_length("long/slashes/", "ab/"),
        full_length("long/mixed/", "é %+/"),
    ])
    .collect();
    let control = [
        "ctl/tab\there",
        "ctl/\u{1}soh",
        "ctl/del\u{7f}",
        "ctl/newline\nline",
        "ctl/return\rret",
        "ctl/esc\u{1b}[31m",
        "ctl/bell\u{7}",
        "ctl/nul\u{0}byte",
        "ctl/unit\u{1f}sep",
        "ctl/c1\u{85}\u{9b}",
    ];
    plain
        .into_iter()
        .map(|k| {
            let dots = k.split('/').any(|seg| seg == "." || seg == "..");
            (k, dots)
        })
        .chain(control.iter().map(|k| (k.to_string(), true)))
        .collect()
}

/// 2 KiB of user metadata, keys and values counted in bytes as S3 counts them.
fn full_metadata() -> Vec<(String, String)> {
    let mut meta: Vec<(String, String)> = (0..4).map(|i| (format!("m{i}"), format!("{i}-").repeat(200))).collect();
    let used: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    let last = MAX_METADATA - used - 4;
    meta.push(("last".into(), "z".repeat(last)));
    assert_eq!(meta.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(), MAX_METADATA);
    meta
}

/// Ten tags using every character a tag may hold: letters of any script, digits, spaces and
/// `+ - = . _ : / @`; one with an empty value.
fn full_tags() -> Vec<(String, String)> {
    let tags = pairs(&[
        ("team", "storage"),
        ("a b", "with spaces"),
        ("x+y", "1+1=2"),
        ("path/to", "/root/dir/"),
        ("user@host", "me@example.org"),
        ("k=v", "a=b"),
        ("dots.and_under", "v.1_2"),
        ("colon:key", "12:30"),
        ("数据", "值 ünïcode"),
        ("empty", ""),
    ]);
    assert_eq!(tags.len(), MAX_TAGS);
    tags
}

fn objects() -> Vec<Obj> {
    let types = [
        "text/plain; charset=utf-8",
        "application/octet-stream",
        "image/x-unusual+xml; q=0.5",
    ];
    let mut objs: Vec<Obj> = awkward_keys()
        .into_iter()
        .enumerate()
        .map(|(i, (key, may_refuse))| {
            // Every fourth object, and the ones named so, have no bytes.
            let body = if i % 4 == 3 || key.starts_with("empty/") {
                Vec::new()
            } else {
                let mut b = key.as_bytes().to_vec();
                b.extend(pseudo_random_bytes(i * 37 % 300, i as u64));
                b
            };
            Obj {
                body,
                content_type: types[i % types.len()].to_string(),
                metadata: pairs(&[("origin", "awkward-keys"), ("index", &i.to_string())]),
                tags: pairs(&[("kind", key.split('/').next().unwrap_or("root").trim())])
                    .into_iter()
                    .filter(|(_, v)| !v.is_empty() && !v.contains(['.', '<', '%']))
                    .collect(),
                key,
                may_refuse,
            }
        })
        .collect();
    // The limits: 2 KiB of metadata, 10 tags, both on a 1,024-byte key and on a zero-byte object.
    let limits = [
        (
            "limits/metadata-2k".to_string(),
            b"metadata".to_vec(),
            full_metadata(),
            vec![],
        ),
        ("limits/ten-tags".to_string(), b"tags".to_vec(), vec![], full_tags()),
        (
            "limits/empty-with-both".to_string(),
            vec![],
            full_metadata(),
            full_tags(),
        ),
        (
            full_length("limits/long-with-both/", "ü"),
            b"long".to_vec(),
            full_metadata(),
            full_tags(),
        ),
    ];
    for (key, body, metadata, tags) in limits {
        objs.push(Obj {
            key,
            body,
            content_type: "application/x-limits".into(),
            metadata,
            tags,
            may_refuse: false,
        });
    }
    objs
}

/// The `x-amz-tagging` form of a tag set.
fn tagging(tags: &[(String, String)]) -> String {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    tags.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Writes one object. A server error (5xx) is tried again a few times, as any client would:
/// SeaweedFS sometimes answers 500 while it sets up storage for a new bucket.
async fn try_put(s3: &Server, bucket: &str, o: &Obj) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match put_once(s3, bucket, o).await {
            Err(e) if attempt < 5 && e.raw_response().is_some_and(|r| r.status().is_server_error()) => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(300 * attempt)).await;
            }
            sent => return sent.map(|_| ()).map_err(|e| format!("{e:?}")),
        }
    }
}

async fn put_once(
    s3: &Server,
    bucket: &str,
    o: &Obj,
) -> Result<
    aws_sdk_s3::operation::put_object::PutObjectOutput,
    aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::put_object::PutObjectError>,
> {
    let mut req = s3
        .client
        .put_object()
        .bucket(bucket)
        .key(&o.key)
        .content_type(&o.content_type)
        .content_length(o.body.len() as i64)
        .body(ByteStream::from(o.body.clone()));
    for (k, v) in &o.metadata {
        req = req.metadata(k, v);
    }
    if !o.tags.is_empty() {
        req = req.tagging(tagging(&o.tags));
    }
    req.send().await
}

/// Writes every object; returns the ones the server took. Only a key of a kind that may be
/// refused (a control character, a dot segment) may be refused (it is reported as `role`'s);
/// any other refusal fails the test.
async fn write_all(s3: &Server, bucket: &str, objs: &[Obj], role: &str, refused: &mut BTreeSet<String>) -> Vec<Obj> {
    let mut taken = Vec::new();
    for o in objs {
        match try_put(s3, bucket, o).await {
            Ok(()) => taken.push(o.clone()),
            Err(e) if o.may_refuse => {
                if refused.insert(o.key.clone()) {
                    println!(
                        "note: the {role} server ({}) refuses the key {:?} at upload; left out: {}",
                        s3.name,
                        o.key,
                        e.chars().take(160).collect::<String>()
                    );
                }
            }
            Err(e) => panic!("the {role} {} refused {:?}: {e}", s3.name, o.key),
        }
    }
    taken
}

/// The objects `s3` holds as written: each is written to a scratch bucket and must come back
/// under its own key with its own bytes. Refusals go to `refused` (see [`write_all`]), keys
/// the server renames (a collapsed slash, say) or cannot read back to `renamed`, with a note.
async fn probe(
    s3: &Server,
    role: &str,
    objs: &[Obj],
    refused: &mut BTreeSet<String>,
    renamed: &mut BTreeSet<String>,
) -> Vec<Obj> {
    create_bucket(s3, "probe", true).await;
    let taken = write_all(s3, "probe", objs, role, refused).await;
    let listed = all_keys(s3, "probe").await;
    // The version listing is what crr reads changes from; a server may name a key otherwise
    // there (SeaweedFS writes U+FFFD for a control character and ignores encoding-type). When
    // the SDK cannot read that listing at all, crr reads its text, so nothing is left out here.
    let versions = version_keys(s3, "probe").await;
    let mut held = Vec::new();
    for o in taken {
        if let Some(v) = &versions
            && !v.contains(&o.key)
        {
            if renamed.insert(o.key.clone()) {
                println!(
                    "note: the {role} server ({}) names the key {:?} otherwise in ListObjectVersions; left out",
                    s3.name, o.key
                );
            }
            continue;
        }
        let back = if listed.contains(&o.key) {
            match s3.client.get_object().bucket("probe").key(&o.key).send().await {
                Ok(out) => out.body.collect().await.ok().map(|b| b.into_bytes().to_vec()),
                Err(_) => None,
            }
        } else {
            None
        };
        if back.as_deref() == Some(&o.body[..]) {
            held.push(o);
        } else if renamed.insert(o.key.clone()) {
            println!(
                "note: the {role} server ({}) does not hold the key {:?} as written ({}); left out",
                s3.name,
                o.key,
                if listed.contains(&o.key) {
                    "other bytes come back"
                } else {
                    "it lists under another name"
                }
            );
        }
    }
    held
}

/// Every key in a bucket as the server stores it, byte for byte: listed with
/// `encoding-type=url` (XML cannot carry every control character) and decoded when the server
/// says it encoded them.
async fn all_keys(s3: &Server, bucket: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = s3
            .client
            .list_objects_v2()
            .bucket(bucket)
            .encoding_type(EncodingType::Url);
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let out = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("list {bucket} on {}: {e:?}", s3.name));
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        for o in out.contents() {
            let raw = o.key().unwrap_or_default();
            keys.insert(if encoded { url_decode(raw) } else { raw.to_string() });
        }
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    keys
}

/// The keys of a bucket's ListObjectVersions (asked with `encoding-type=url`, decoded when the
/// server says it encoded them); `None` when the SDK cannot read the listing.
async fn version_keys(s3: &Server, bucket: &str) -> Option<BTreeSet<String>> {
    let out = s3
        .client
        .list_object_versions()
        .bucket(bucket)
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .ok()?;
    assert_ne!(out.is_truncated(), Some(true), "the probe bucket fits one page");
    let encoded = out.encoding_type() == Some(&EncodingType::Url);
    let keys = out
        .versions()
        .iter()
        .filter_map(|v| v.key())
        .map(|k| if encoded { url_decode(k) } else { k.to_string() })
        .collect();
    Some(keys)
}

/// Form decoding as S3 clients do it: `+` is a space (a literal plus arrives as `%2B`).
fn url_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .unwrap_or_else(|e| panic!("listed key {s:?} is not UTF-8 once decoded: {e}"))
        .into_owned()
}

async fn object_bytes(s3: &Server, bucket: &str, key: &str) -> Vec<u8> {
    let out = s3
        .client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key:?} on {}: {e:?}", s3.name));
    out.body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("read {bucket}/{key:?}: {e:?}"))
        .into_bytes()
        .to_vec()
}

/// The keys in `a` and not in `b`, escaped so that every byte shows.
fn missing(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).map(|k| format!("{k:?}")).collect()
}

/// The destination holds exactly the source's keys, and each object the same bytes,
/// Content-Type, user metadata and tags; the source holds what was written.
async fn assert_exact_copy(src: &Server, src_bucket: &str, dst: &Server, dst_bucket: &str, written: &[Obj]) {
    let want: BTreeSet<String> = written.iter().map(|o| o.key.clone()).collect();
    let on_src = all_keys(src, src_bucket).await;
    assert!(
        on_src == want,
        "the source {} stores other keys than were written: missing {:?}, extra {:?}",
        src.name,
        missing(&want, &on_src),
        missing(&on_src, &want)
    );
    let on_dst = all_keys(dst, dst_bucket).await;
    assert!(
        on_dst == on_src,
        "{} -> {}: the destination's keys differ from the source's: not replicated {:?}, extra {:?}",
        src_bucket,
        dst_bucket,
        missing(&on_src, &on_dst),
        missing(&on_dst, &on_src)
    );
    let by_key: BTreeMap<&str, &Obj> = written.iter().map(|o| (o.key.as_str(), o)).collect();
    for key in &on_src {
        let o = by_key[key.as_str()];
        let (s, d) = (
            object_bytes(src, src_bucket, key).await,
            object_bytes(dst, dst_bucket, key).await,
        );
        assert_eq!(s, o.body, "{key:?}: the source's bytes are not what was written");
        assert!(
            d == s,
            "{key:?}: the replica's bytes differ ({} vs {} bytes)",
            d.len(),
            s.len()
        );
        let sh = head(src, src_bucket, key).await.expect("source head");
        let dh = head(dst, dst_bucket, key).await.expect("replica head");
        assert_eq!(
            sh.content_type.as_deref(),
            Some(o.content_type.as_str()),
            "{key:?}: source Content-Type"
        );
        assert_eq!(
            sh.metadata.len(),
            o.metadata.len(),
            "{key:?}: source metadata {:?}",
            sh.metadata
        );
        assert_same_headers(&format!("{key:?}"), &sh, &dh);
        let st = tags(src, src_bucket, key).await;
        assert_eq!(st.len(), o.tags.len(), "{key:?}: source tags {st:?}");
        assert_eq!(tags(dst, dst_bucket, key).await, st, "{key:?}: tags");
    }
}

async fn awkward_keys_replicate(source: Kind, destination: Kind) {
    let env = Env::start_with(source, destination).await;
    let (gz, sh) = (&env.gz, &env.sh);
    for (s, d) in [(RT_SRC, RT_DST), (MIG_SRC, MIG_DST)] {
        create_bucket(gz, s, true).await;
        create_bucket(sh, d, true).await;
    }
    let objs = objects();
    // A key a server cannot hold as written cannot be replicated through it: found by writing
    // every key to a scratch bucket on each server first and reading it back.
    let mut refused = BTreeSet::new();
    let mut renamed = BTreeSet::new();
    let held = probe(sh, "destination", &objs, &mut refused, &mut renamed).await;
    let held = probe(gz, "source", &held, &mut refused, &mut renamed).await;

    // Written before the rules exist: the migration's share.
    let before = write_all(gz, MIG_SRC, &held, "source", &mut refused).await;
    assert_eq!(before.len(), held.len(), "the source took a key on the second try only");
    env.write_config(&[
        Rule::new("rt", &format!("gz/{RT_SRC}"), &format!("sh/{RT_DST}")),
        Rule::new("mig", &format!("gz/{MIG_SRC}"), &format!("sh/{MIG_DST}")).historical(true),
    ]);
    env.run_once().await;
    // Written after the enable point: real-time replication's share.
    let after = write_all(gz, RT_SRC, &held, "source", &mut refused).await;
    assert_eq!(after.len(), held.len(), "the source took a key on the second try only");
    env.run_once().await;

    assert_exact_copy(gz, MIG_SRC, sh, MIG_DST, &before).await;
    assert_exact_copy(gz, RT_SRC, sh, RT_DST, &after).await;
    let status = env.status_json().await;
    for id in ["rt", "mig"] {
        let r = find_rule_status(&status, id);
        assert_eq!(r["failed_tasks"], 0, "rule {id}: {r}");
    }
    assert_eq!(
        find_rule_status(&status, "mig")["migration"]["state"],
        "completed",
        "{status}"
    );
    println!(
        "{} -> {}: {} keys tried ({} of kinds a server may refuse); left out because a server refused them \
         at upload: {:?}; left out because a server stores them under another name or without their bytes: \
         {:?}; {} replicated in real time and {} by migration, byte-exact",
        source.label(),
        destination.label(),
        objs.len(),
        objs.iter().filter(|o| o.may_refuse).count(),
        refused,
        renamed,
        after.len(),
        before.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_replicate_seaweedfs_to_moto() {
    awkward_keys_replicate(Kind::Weed, Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_replicate_moto_to_moto() {
    awkward_keys_replicate(Kind::Moto, Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_replicate_moto_to_seaweedfs() {
    awkward_keys_replicate(Kind::Moto, Kind::Weed).await;
}
