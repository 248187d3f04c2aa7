//! Side-by-side benchmark: crr against rclone, the AWS CLI and a bare copy loop with crr's own
//! clients (the ceiling), on pairs of local S3 servers (SeaweedFS and moto), every run verified.
//!
//! `scripts/bench` runs the full comparison (release build); `cargo test --bench compare --
//! --smoke` runs a short check of the harness with crr and the ceiling only (dev build), as the
//! last step of `scripts/test`. `--help` lists the flags. The report goes to stdout and to
//! `$CARGO_TARGET_DIR/bench/report.md` (default `target/bench/report.md`). A failed run or
//! verification makes the exit status 1; no speed is ever asserted.

#[path = "../../tests/common/mod.rs"]
mod common;

mod ceiling;
mod data;
mod measure;
mod proxy;
mod realtime;
mod report;
mod tools;

use common::{GZ_REGION, Kind, SH_REGION, Server, create_bucket};
use data::{Obj, hash_bucket, remove_bucket, verify};
use report::{Report, Run};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tools::{Paths, Side, Tool};

const HELP: &str = "\
compare: crr beside rclone, the AWS CLI and the ceiling, on local S3 servers

  --smoke              short check: SeaweedFS only, crr and the ceiling, 1,000 x 4 KiB + 1 x 64 MiB,
                       100 real-time changes, one repetition
  --pairs LIST         server pairs: weed,moto (default both)
  --tools LIST         crr,rclone,s3sync,aws,ceiling,ceiling-get,ceiling-put (default all; s3sync
                       only once `scripts/bench-tools --s3sync` has built it)
  --reps N             repetitions per tool and workload (default 3)
  --small N            objects of 4 KiB (default 10000; 0 skips the workload)
  --medium N           objects of 1 MiB (default 200)
  --large N            large objects (default 4)
  --large-mib N        size of a large object in MiB (default 256)
  --rt-changes N       real-time changes written while `crr serve` runs (default 1000; 0 skips)
  --rt-rate N          changes per second (default 50)
  --no-rt-migration    skip the real-time run during a migration
  --noop-large N       versions of the large no-op re-run, SeaweedFS only (default 100000; 0 skips)
  --no-requests        skip the request-counting runs through the proxy
  --seed N             order of the runs (default: from the clock; printed)
  --timeout SECS       per tool run (default 3600)
  --crr PATH           the crr binary (default: the one cargo built for this bench)
  --keep               keep the working directory
";

#[derive(Clone, Debug)]
struct Workload {
    name: &'static str,
    count: usize,
    size: u64,
}

#[derive(Debug)]
struct Opts {
    pairs: Vec<Kind>,
    tools: Vec<Tool>,
    reps: usize,
    workloads: Vec<Workload>,
    rt_changes: usize,
    rt_rate: f64,
    rt_migration: bool,
    noop_large: usize,
    requests: bool,
    seed: u64,
    timeout: u64,
    crr: PathBuf,
    keep: bool,
    argv: Vec<String>,
}

fn parse(argv: Vec<String>) -> Result<Opts, String> {
    let smoke = argv.iter().any(|a| a == "--smoke");
    let mut o = Opts {
        pairs: if smoke {
            vec![Kind::Weed]
        } else {
            vec![Kind::Weed, Kind::Moto]
        },
        tools: if smoke {
            vec![Tool::Crr, Tool::Ceiling]
        } else {
            Tool::ALL.to_vec()
        },
        reps: if smoke { 1 } else { 3 },
        workloads: vec![],
        rt_changes: if smoke { 100 } else { 1000 },
        rt_rate: 50.0,
        rt_migration: !smoke,
        noop_large: if smoke { 0 } else { 100_000 },
        requests: true,
        seed: fastrand::u64(..),
        timeout: 3600,
        crr: PathBuf::from(env!("CARGO_BIN_EXE_crr")),
        keep: false,
        argv: argv.clone(),
    };
    let (mut small, mut medium, mut large, mut large_mib) =
        if smoke { (1000, 0, 1, 64) } else { (10_000, 200, 4, 256) };
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        let n = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            "--smoke" | "--bench" => {}
            "--help" | "-h" => return Err(HELP.to_string()),
            "--pairs" => {
                o.pairs = val()?
                    .split(',')
                    .map(|p| match p {
                        "weed" | "seaweedfs" => Ok(Kind::Weed),
                        "moto" => Ok(Kind::Moto),
                        _ => Err(format!("unknown pair {p:?}: weed or moto")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--tools" => {
                o.tools = val()?
                    .split(',')
                    .map(|t| Tool::from_name(t).ok_or(format!("unknown tool {t:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--reps" => o.reps = n(val()?)?.max(1),
            "--small" => small = n(val()?)?,
            "--medium" => medium = n(val()?)?,
            "--large" => large = n(val()?)?,
            "--large-mib" => large_mib = n(val()?)? as u64,
            "--rt-changes" => o.rt_changes = n(val()?)?,
            "--rt-rate" => o.rt_rate = val()?.parse().map_err(|e| format!("--rt-rate: {e}"))?,
            "--no-rt-migration" => o.rt_migration = false,
            "--noop-large" => o.noop_large = n(val()?)?,
            "--no-requests" => o.requests = false,
            "--seed" => o.seed = n(val()?)? as u64,
            "--timeout" => o.timeout = n(val()?)? as u64,
            "--crr" => o.crr = val()?.into(),
            "--keep" => o.keep = true,
            other => return Err(format!("unknown argument {other:?}\n\n{HELP}")),
        }
    }
    for (name, count, size) in [
        ("small", small, 4u64 << 10),
        ("medium", medium, 1 << 20),
        ("large", large, large_mib << 20),
    ] {
        if count > 0 {
            o.workloads.push(Workload { name, count, size });
        }
    }
    Ok(o)
}

fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Weed => "SeaweedFS→SeaweedFS",
        Kind::Moto => "moto→moto",
    }
}

fn side(s: &Server, bucket: &str) -> Side {
    Side {
        url: s.url.clone(),
        region: s.region.clone(),
        bucket: bucket.to_string(),
    }
}

/// `crr run --once` again in a directory whose state is caught up: what a scan that finds
/// nothing costs.
async fn noop(paths: &Paths, dir: &Path) -> Result<measure::Cost, String> {
    let log = dir.join("noop.log");
    let exit = measure::run(tools::crr_command(paths, dir, &["run", "--once"]), &log, paths.timeout)
        .await
        .map_err(|e| e.to_string())?;
    if exit.success() {
        Ok(exit.cost)
    } else {
        Err(format!("exit {}: {}", exit.code, measure::tail(&log, 8)))
    }
}

/// One workload on one pair: seed, then every tool and repetition in random order, verified;
/// then one more run per tool through the counting proxies.
async fn workload(
    (o, paths, work): (&Opts, &Paths, &Path),
    kind: Kind,
    src: &Server,
    dst: &Server,
    w: &Workload,
    first: bool,
    r: &mut Report,
) {
    let pair = label(kind);
    let objs: Vec<Obj> = data::objects(w.name, w.count, w.size);
    let bytes: u64 = objs.iter().map(|o| o.size).sum();
    let src_bucket = format!("src-{}", w.name);
    eprintln!("[{pair}] {}: seeding {} objects ...", w.name, objs.len());
    let seeded = data::seed(src, &src_bucket, &objs, 32).await;
    let want = match seeded {
        Ok(()) => hash_bucket(src, &src_bucket, 32).await,
        Err(e) => Err(e),
    };
    let want = match want {
        Ok(h) if h.len() == objs.len() => h,
        other => {
            let why = match other {
                Ok(h) => format!("the source holds {} objects, not {}", h.len(), objs.len()),
                Err(e) => e,
            };
            for &tool in &o.tools {
                r.runs.push(Run {
                    pair: pair.into(),
                    workload: w.name.into(),
                    tool,
                    rep: 0,
                    objects: objs.len(),
                    bytes,
                    outcome: Err(format!("seeding failed: {why}")),
                });
            }
            return;
        }
    };
    let mut order: Vec<(Tool, usize)> = o
        .tools
        .iter()
        .flat_map(|&t| (0..o.reps).map(move |rep| (t, rep)))
        .collect();
    fastrand::Rng::with_seed(o.seed ^ w.count as u64 ^ kind as u64).shuffle(&mut order);
    let mut noop_done = !first;
    for (tool, rep) in order {
        let dst_bucket = format!("dst-{}-{}-{rep}", w.name, tool.name());
        let dir = work.join(format!("{}-{}-{}-{rep}", kind.label(), w.name, tool.name()));
        let (s, d) = (side(src, &src_bucket), side(dst, &dst_bucket));
        let mut outcome = match data::fresh_bucket(dst, &dst_bucket).await {
            Ok(()) => tools::run(tool, paths, &dir, &s, &d, &objs).await,
            Err(e) => Err(e),
        };
        if outcome.is_ok()
            && tool.copies()
            && let Err(e) = verify(&want, dst, &dst_bucket).await
        {
            outcome = Err(format!("verification: {e}"));
        }
        eprintln!(
            "[{pair}] {} {} rep {rep}: {}",
            w.name,
            tool.name(),
            match &outcome {
                Ok(c) => format!("{:.2} s wall, {:.2} s CPU", c.wall.as_secs_f64(), c.cpu.as_secs_f64()),
                Err(e) => format!("FAILED {e}"),
            }
        );
        if tool == Tool::Crr && outcome.is_ok() && !noop_done {
            noop_done = true;
            let what = format!("{} versions, after its migration", objs.len());
            r.noops.push((pair.into(), what, noop(paths, &dir).await));
        }
        r.runs.push(Run {
            pair: pair.into(),
            workload: w.name.into(),
            tool,
            rep,
            objects: objs.len(),
            bytes,
            outcome,
        });
        remove_bucket(dst, &dst_bucket).await;
    }
    if !o.requests {
        return;
    }
    for &tool in &o.tools {
        let dst_bucket = format!("dst-{}-{}-count", w.name, tool.name());
        let (s, d) = (side(src, &src_bucket), side(dst, &dst_bucket));
        let counted = async {
            data::fresh_bucket(dst, &dst_bucket).await?;
            let sp = proxy::Proxy::start(&tools::upstream(&s))
                .await
                .map_err(|e| e.to_string())?;
            let dp = proxy::Proxy::start(&tools::upstream(&d))
                .await
                .map_err(|e| e.to_string())?;
            let dir = work.join(format!("{}-{}-{}-count", kind.label(), w.name, tool.name()));
            tools::run(
                tool,
                paths,
                &dir,
                &tools::via(&s, &sp.url),
                &tools::via(&d, &dp.url),
                &objs,
            )
            .await?;
            if tool.copies() {
                verify(&want, dst, &dst_bucket)
                    .await
                    .map_err(|e| format!("verification: {e}"))?;
            }
            let mut counts = sp.snapshot();
            for (k, v) in dp.snapshot() {
                *counts.entry(k).or_default() += v;
            }
            Ok::<_, String>(proxy::per_object(&counts, objs.len()))
        }
        .await;
        eprintln!("[{pair}] {} {} requests: {counted:?}", w.name, tool.name());
        r.requests.insert((pair.into(), w.name.into(), tool), counted);
        remove_bucket(dst, &dst_bucket).await;
    }
}

/// The no-op re-run on a large bucket: a rule without history is enabled by one run, then a
/// second run (measured) scans the bucket and finds nothing to do.
async fn noop_large(paths: &Paths, work: &Path, src: &Server, dst: &Server, n: usize) -> Result<measure::Cost, String> {
    let objs = data::objects("noop", n, 1024);
    eprintln!("[SeaweedFS] seeding {n} objects for the large no-op re-run ...");
    data::seed(src, "noop-src", &objs, 32).await?;
    create_bucket(dst, "noop-dst", true).await;
    let dir = work.join("noop-large");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (s, d) = (side(src, "noop-src"), side(dst, "noop-dst"));
    let text = tools::crr_config(&s, &d, "", &tools::crr_rule("noop", &s, &d, false));
    std::fs::write(dir.join("crr.toml"), text).map_err(|e| e.to_string())?;
    noop(paths, &dir).await?;
    let cost = noop(paths, &dir).await;
    remove_bucket(dst, "noop-dst").await;
    cost
}

fn proc_line(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

fn header(o: &Opts, paths: &Paths) -> Vec<(String, String)> {
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let crr_version = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--tags"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let profile = if paths.crr.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug"
    };
    let mut h = vec![
        (
            "date".into(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ),
        (
            "machine".into(),
            format!(
                "{cpus} × {}, {:.1} GiB memory, Linux {}",
                proc_line("/proc/cpuinfo", "model name"),
                proc_line("/proc/meminfo", "MemTotal")
                    .trim_end_matches(" kB")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / (1 << 20) as f64,
                kernel.trim()
            ),
        ),
        ("crr".into(), format!("{crr_version} ({profile} build)")),
    ];
    if let Some(p) = &paths.rclone {
        h.push(("rclone".into(), tools::version(p, &["version"])));
    }
    if let Some(p) = &paths.s3sync {
        h.push(("s3sync".into(), tools::version(p, &["--version"])));
    }
    if let Some(p) = &paths.aws {
        h.push(("aws".into(), tools::version(p, &["--version"])));
    }
    h.push((
        "flags".into(),
        format!(
            "crr `[engine] workers = {c}`, rule `historical = true`; rclone `copy {}`; s3sync `{}`; aws `s3 cp --recursive` down then up, \
             max_concurrent_requests {c}; ceiling: GET then PUT (ranged GET then UploadPart above 16 MiB, 8 MiB parts) \
             with crr's clients, {c} requests in flight",
            tools::RCLONE_FLAGS.join(" "),
            tools::S3SYNC_FLAGS.join(" "),
            c = tools::CONCURRENCY
        ),
    ));
    h.push(("harness".into(), format!("`{}`, seed {}", o.argv.join(" "), o.seed)));
    h
}

fn report_path(smoke: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let name = if smoke { "report-smoke.md" } else { "report.md" };
    target.join("bench").join(name)
}

fn which(name: &str) -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin").join(name);
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.exists()))
}

async fn bench(o: Opts) -> bool {
    let mut tools_found = o.tools.clone();
    let paths = Paths {
        crr: o.crr.clone(),
        rclone: o.tools.contains(&Tool::Rclone).then(|| which("rclone")).flatten(),
        s3sync: o.tools.contains(&Tool::S3sync).then(|| which("s3sync")).flatten(),
        aws: o.tools.contains(&Tool::Aws).then(|| which("aws")).flatten(),
        timeout: Duration::from_secs(o.timeout),
    };
    for (tool, found) in [
        (Tool::Rclone, &paths.rclone),
        (Tool::S3sync, &paths.s3sync),
        (Tool::Aws, &paths.aws),
    ] {
        if o.tools.contains(&tool) && found.is_none() {
            let how = match tool {
                Tool::S3sync => "opt-in: `scripts/bench --with-s3sync` builds it once, about 10 minutes",
                _ => "run scripts/bench-tools",
            };
            eprintln!("{} not found ({how}): left out", tool.name());
            tools_found.retain(|t| *t != tool);
        }
    }
    let o = Opts {
        tools: tools_found,
        ..o
    };
    let work = tempfile::Builder::new()
        .prefix("crr-compare-")
        .tempdir()
        .expect("create a working directory");
    let mut r = Report {
        header: header(&o, &paths),
        ..Report::default()
    };
    for (pi, &kind) in o.pairs.iter().enumerate() {
        let dir = work.path().join(format!("servers-{pi}"));
        std::fs::create_dir_all(&dir).expect("create the servers' directory");
        eprintln!("[{}] starting two servers ...", label(kind));
        let (src, dst) = tokio::join!(
            Server::start_kind(kind, "gz", GZ_REGION, &dir),
            Server::start_kind(kind, "sh", SH_REGION, &dir)
        );
        for (i, w) in o.workloads.iter().enumerate() {
            workload((&o, &paths, work.path()), kind, &src, &dst, w, i == 0, &mut r).await;
        }
        if o.rt_changes > 0 && o.tools.contains(&Tool::Crr) {
            let pair = label(kind);
            eprintln!("[{pair}] real time: {} changes, engine idle ...", o.rt_changes);
            let rt = |n: usize| work.path().join(format!("{}-rt-{n}", kind.label()));
            let lag = realtime::run("idle", &paths, &rt(0), &src, &dst, 0, o.rt_changes, o.rt_rate, None).await;
            r.lags.push((pair.into(), lag));
            let small = o.workloads.iter().find(|w| w.name == "small");
            if let (true, Some(w)) = (o.rt_migration, small) {
                eprintln!("[{pair}] real time: {} changes during a migration ...", o.rt_changes);
                let during = format!("migrating {} objects", w.count);
                let lag = realtime::run(
                    &during,
                    &paths,
                    &rt(1),
                    &src,
                    &dst,
                    1,
                    o.rt_changes,
                    o.rt_rate,
                    Some("src-small"),
                )
                .await;
                r.lags.push((pair.into(), lag));
            }
        }
        if kind == Kind::Weed && o.noop_large > 0 && o.tools.contains(&Tool::Crr) {
            let cost = noop_large(&paths, work.path(), &src, &dst, o.noop_large).await;
            let what = format!("{} versions, rule without history", o.noop_large);
            r.noops.push((label(kind).into(), what, cost));
        }
    }
    let text = r.markdown();
    println!("{text}");
    let path = report_path(o.argv.iter().any(|a| a == "--smoke"));
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&path, &text) {
        Ok(()) => eprintln!("report written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    if o.keep {
        eprintln!("kept {}", work.keep().display());
    }
    !r.failed()
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--ceiling") {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        if let Err(e) = rt.block_on(ceiling::main(&argv)) {
            eprintln!("ceiling: {e}");
            std::process::exit(1);
        }
        return;
    }
    let o = match parse(argv) {
        Ok(o) => o,
        Err(text) => {
            eprintln!("{text}");
            std::process::exit(if text == HELP { 0 } else { 2 });
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ok = rt.block_on(bench(o));
    if !ok {
        eprintln!("FAILED: at least one run or verification failed (see the report)");
        std::process::exit(1);
    }
}
