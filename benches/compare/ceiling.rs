//! The ceiling: a bare copy loop with crr's own S3 clients (`crr::s3::Clients::connect`, the
//! same SDK and settings), run by the harness as a child process of itself so its CPU is
//! accounted apart. Modes: `get-put` (GET each object and stream it into a PUT; parts of large
//! objects as ranged GETs into UploadPart), `get` (GETs only, bodies drained) and `put` (PUTs of
//! generated bodies of the same sizes). No listing, no HEAD, no checksums beyond the SDK's.

use crate::data::{MULTIPART_THRESHOLD, Obj, PART_SIZE};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// `--ceiling MODE --src URL REGION BUCKET --dst URL REGION BUCKET --keys FILE --concurrency N`
pub struct Args {
    pub mode: String,
    pub src: [String; 3],
    pub dst: [String; 3],
    pub keys: std::path::PathBuf,
    pub concurrency: usize,
}

impl Args {
    pub fn to_argv(&self) -> Vec<String> {
        let mut v = vec!["--ceiling".to_string(), self.mode.clone(), "--src".to_string()];
        v.extend(self.src.iter().cloned());
        v.push("--dst".to_string());
        v.extend(self.dst.iter().cloned());
        v.push("--keys".to_string());
        v.push(self.keys.display().to_string());
        v.push("--concurrency".to_string());
        v.push(self.concurrency.to_string());
        v
    }

    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let at = |flag: &str, n: usize| -> Result<Vec<String>, String> {
            let i = argv.iter().position(|a| a == flag).ok_or(format!("missing {flag}"))?;
            let vals = argv.get(i + 1..i + 1 + n).ok_or(format!("{flag} needs {n} values"))?;
            Ok(vals.to_vec())
        };
        let three = |flag: &str| -> Result<[String; 3], String> {
            let v = at(flag, 3)?;
            Ok([v[0].clone(), v[1].clone(), v[2].clone()])
        };
        Ok(Args {
            mode: at("--ceiling", 1)?.remove(0),
            src: three("--src")?,
            dst: three("--dst")?,
            keys: at("--keys", 1)?.remove(0).into(),
            concurrency: at("--concurrency", 1)?[0]
                .parse()
                .map_err(|e| format!("--concurrency: {e}"))?,
        })
    }
}

/// Writes the objects to copy, one `key<TAB>size` a line.
pub fn write_keys(path: &std::path::Path, objs: &[Obj]) -> std::io::Result<()> {
    let text: String = objs.iter().map(|o| format!("{}\t{}\n", o.key, o.size)).collect();
    std::fs::write(path, text)
}

fn read_keys(path: &std::path::Path) -> Result<Vec<Obj>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| {
            let (key, size) = l.rsplit_once('\t').ok_or(format!("bad line {l:?}"))?;
            Ok(Obj {
                key: key.to_string(),
                size: size.parse().map_err(|e| format!("{l:?}: {e}"))?,
            })
        })
        .collect()
}

/// crr's clients for the two endpoints, built from a config as crr builds them.
async fn clients(a: &Args) -> Result<(Client, Client), String> {
    let endpoint = |name: &str, e: &[String; 3]| {
        format!(
            "[[endpoint]]\nname = \"{name}\"\nregion = \"{}\"\nurl = \"{}\"\npath_style = true\n",
            e[1], e[0]
        )
    };
    let text = format!("{}\n{}", endpoint("src", &a.src), endpoint("dst", &a.dst));
    let config = crr::config::parse(std::path::Path::new("ceiling.toml"), &text).map_err(|e| format!("{e:?}"))?;
    let clients = crr::s3::Clients::connect(&config).await;
    let get = |n: &str| clients.get(n).cloned().map_err(|e| e.to_string());
    // Writes go through crr's client for streamed bodies (no read timeout), as crr's do.
    Ok((get("src")?.client, get("dst")?.streaming))
}

/// Runs the ceiling mode described by `argv` to completion.
pub async fn main(argv: &[String]) -> Result<(), String> {
    let a = Args::parse(argv)?;
    let objs = read_keys(&a.keys)?;
    let (src, dst) = clients(&a).await?;
    let slots = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let (sb, db) = (a.src[2].clone(), a.dst[2].clone());
    let mode = a.mode.clone();
    // Objects are started in order; every GET and PUT (or part) takes a slot, so at most
    // `concurrency` requests are in flight whatever the sizes.
    futures::stream::iter(objs)
        .map(|o| {
            let (src, dst, sb, db, slots, mode) = (
                src.clone(),
                dst.clone(),
                sb.clone(),
                db.clone(),
                slots.clone(),
                mode.clone(),
            );
            async move {
                if o.size > MULTIPART_THRESHOLD && mode != "get" {
                    multipart(&mode, &src, &dst, &sb, &db, &o, &slots).await
                } else {
                    let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
                    whole(&mode, &src, &dst, &sb, &db, &o).await
                }
            }
        })
        .buffer_unordered(a.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

async fn drain(mut body: ByteStream) -> Result<u64, String> {
    let mut n = 0;
    while let Some(chunk) = body.try_next().await.map_err(|e| e.to_string())? {
        n += chunk.len() as u64;
    }
    Ok(n)
}

fn body_of(len: u64) -> ByteStream {
    ByteStream::from(vec![7u8; len as usize])
}

async fn whole(mode: &str, src: &Client, dst: &Client, sb: &str, db: &str, o: &Obj) -> Result<(), String> {
    let (body, len) = if mode == "put" {
        (body_of(o.size), o.size)
    } else {
        let got = src
            .get_object()
            .bucket(sb)
            .key(&o.key)
            .send()
            .await
            .map_err(|e| format!("GET {}: {e:?}", o.key))?;
        let len = got.content_length().unwrap_or(o.size as i64) as u64;
        if mode == "get" {
            drain(got.body).await?;
            return Ok(());
        }
        (got.body, len)
    };
    dst.put_object()
        .bucket(db)
        .key(&o.key)
        .content_length(len as i64)
        .body(body)
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .map_err(|e| format!("PUT {}: {e:?}", o.key))?;
    Ok(())
}

async fn multipart(
    mode: &str,
    src: &Client,
    dst: &Client,
    sb: &str,
    db: &str,
    o: &Obj,
    slots: &Semaphore,
) -> Result<(), String> {
    let upload = dst
        .create_multipart_upload()
        .bucket(db)
        .key(&o.key)
        .send()
        .await
        .map_err(|e| format!("CreateMultipartUpload {}: {e:?}", o.key))?;
    let id = upload.upload_id().unwrap_or_default().to_string();
    let parts = o.size.div_ceil(PART_SIZE);
    let done: Vec<CompletedPart> = futures::stream::iter(0..parts)
        .map(|i| {
            let id = id.clone();
            async move {
                let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
                let (start, end) = (i * PART_SIZE, ((i + 1) * PART_SIZE).min(o.size));
                let body = if mode == "put" {
                    body_of(end - start)
                } else {
                    src.get_object()
                        .bucket(sb)
                        .key(&o.key)
                        .range(format!("bytes={start}-{}", end - 1))
                        .send()
                        .await
                        .map_err(|e| format!("GET {} part {i}: {e:?}", o.key))?
                        .body
                };
                let out = dst
                    .upload_part()
                    .bucket(db)
                    .key(&o.key)
                    .upload_id(&id)
                    .part_number(i as i32 + 1)
                    .content_length((end - start) as i64)
                    .body(body)
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| format!("UploadPart {} part {i}: {e:?}", o.key))?;
                Ok::<_, String>(
                    CompletedPart::builder()
                        .part_number(i as i32 + 1)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            }
        })
        .buffered(parts as usize)
        .try_collect()
        .await?;
    dst.complete_multipart_upload()
        .bucket(db)
        .key(&o.key)
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await
        .map_err(|e| format!("CompleteMultipartUpload {}: {e:?}", o.key))?;
    Ok(())
}
