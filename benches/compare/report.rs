//! The markdown report: absolute figures per tool, ratios crr/peer and crr/ceiling, the
//! real-time lag, the no-op re-run, and every failure.

use crate::measure::Cost;
use crate::realtime::{Lag, SCAN_INTERVAL, percentiles};
use crate::tools::Tool;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One timed run of one tool.
#[derive(Debug)]
pub struct Run {
    pub pair: String,
    pub workload: String,
    pub tool: Tool,
    pub rep: usize,
    pub objects: usize,
    pub bytes: u64,
    /// The run's cost, when it and its verification passed.
    pub outcome: Result<Cost, String>,
}

impl Run {
    fn objects_per_s(c: &Cost, objects: usize) -> f64 {
        objects as f64 / c.wall.as_secs_f64().max(1e-9)
    }
}

/// Requests per copied object, and the text of the count by kind.
pub type Requests = Result<(f64, String), String>;

/// Everything measured, and the header facts.
#[derive(Default)]
pub struct Report {
    pub header: Vec<(String, String)>,
    pub runs: Vec<Run>,
    /// (pair, workload, tool) -> (requests per object, by kind)
    pub requests: BTreeMap<(String, String, Tool), Requests>,
    pub lags: Vec<(String, Lag)>,
    /// (pair, what, cost)
    pub noops: Vec<(String, String, Result<Cost, String>)>,
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "–".to_string()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// "median [min–max]" of a set of values.
fn spread(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "–".to_string();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    if v.len() == 1 {
        return num(mid);
    }
    format!("{} [{}–{}]", num(mid), num(v[0]), num(v[v.len() - 1]))
}

impl Report {
    fn ok_costs(&self, pair: &str, workload: &str, tool: Tool) -> Vec<(&Run, &Cost)> {
        let mut v: Vec<(&Run, &Cost)> = self
            .runs
            .iter()
            .filter(|r| r.pair == pair && r.workload == workload && r.tool == tool)
            .filter_map(|r| r.outcome.as_ref().ok().map(|c| (r, c)))
            .collect();
        v.sort_by_key(|(r, _)| r.rep);
        v
    }

    pub fn failed(&self) -> bool {
        self.runs.iter().any(|r| r.outcome.is_err())
            || self.requests.values().any(|r| r.is_err())
            || self.lags.iter().any(|(_, l)| l.verified.is_err())
            || self.noops.iter().any(|(_, _, c)| c.is_err())
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("# crr: side-by-side replication benchmark\n\n");
        for (k, v) in &self.header {
            let _ = writeln!(s, "- **{k}**: {v}");
        }
        s.push_str(
            "\nFigures are medians with [min–max] over repetitions; each repetition copied into a fresh \
             destination bucket and was verified (every key, size and MD5 of the downloaded bytes). \
             CPU is the tool process's own (wait4 rusage); peak RSS is its VmHWM, sampled every 5 ms. Nothing here is asserted.\n",
        );
        let mut groups: Vec<(String, String)> =
            self.runs.iter().map(|r| (r.pair.clone(), r.workload.clone())).collect();
        groups.dedup();
        for (pair, workload) in &groups {
            self.group(&mut s, pair, workload);
        }
        self.realtime(&mut s);
        if !self.noops.is_empty() {
            s.push_str("\n## No-op re-run of `crr run --once` (nothing changed)\n\n");
            s.push_str("| pair | source | wall s | CPU s | peak RSS MiB |\n|---|---|---|---|---|\n");
            for (pair, what, cost) in &self.noops {
                match cost {
                    Ok(c) => {
                        let _ = writeln!(
                            s,
                            "| {pair} | {what} | {} | {} | {} |",
                            num(c.wall.as_secs_f64()),
                            num(c.cpu.as_secs_f64()),
                            num(c.max_rss_kib as f64 / 1024.0)
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(s, "| {pair} | {what} | FAILED: {} | | |", one_line(e));
                    }
                }
            }
        }
        self.failures(&mut s);
        s
    }

    fn group(&self, s: &mut String, pair: &str, workload: &str) {
        let runs: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.pair == pair && r.workload == workload)
            .collect();
        let (objects, bytes) = (runs[0].objects, runs[0].bytes);
        let _ = writeln!(
            s,
            "\n## {pair}: {workload} ({objects} objects, {:.1} MB)\n",
            bytes as f64 / 1e6
        );
        s.push_str(
            "| tool | ok/runs | wall s | objects/s | MB/s | CPU ms per 1k objects | CPU s per GB | peak RSS MiB | requests per object |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        let mut tools: Vec<Tool> = runs.iter().map(|r| r.tool).collect();
        tools.sort();
        tools.dedup();
        for &tool in &tools {
            let all = runs.iter().filter(|r| r.tool == tool).count();
            let ok = self.ok_costs(pair, workload, tool);
            let col = |f: &dyn Fn(&Cost) -> f64| spread(ok.iter().map(|(_, c)| f(c)).collect());
            let requests = match self.requests.get(&(pair.to_string(), workload.to_string(), tool)) {
                Some(Ok((n, kinds))) => format!("{} ({kinds})", num(*n)),
                Some(Err(e)) => format!("FAILED: {}", one_line(e)),
                None => "–".to_string(),
            };
            let _ = writeln!(
                s,
                "| {} | {}/{all} | {} | {} | {} | {} | {} | {} | {requests} |",
                tool.name(),
                ok.len(),
                col(&|c| c.wall.as_secs_f64()),
                col(&|c| Run::objects_per_s(c, objects)),
                col(&|c| bytes as f64 / 1e6 / c.wall.as_secs_f64().max(1e-9)),
                col(&|c| c.cpu.as_secs_f64() * 1e3 * 1000.0 / objects.max(1) as f64),
                col(&|c| c.cpu.as_secs_f64() / (bytes as f64 / 1e9).max(1e-12)),
                col(&|c| c.max_rss_kib as f64 / 1024.0),
            );
        }
        let crr = self.ok_costs(pair, workload, Tool::Crr);
        let peers: Vec<Tool> = tools
            .iter()
            .copied()
            .filter(|t| *t != Tool::Crr && t.copies())
            .collect();
        if crr.is_empty() || peers.is_empty() {
            return;
        }
        s.push_str(
            "\nRatios, crr against each (>1: crr better; repetitions paired in order): throughput is \
             crr/peer, CPU and RSS peer/crr. Against the ceiling this is crr's efficiency.\n\n\
             | crr vs | objects/s | CPU per object | peak RSS |\n|---|---|---|---|\n",
        );
        for peer in peers {
            let other = self.ok_costs(pair, workload, peer);
            let pairs: Vec<(&Cost, &Cost)> = crr.iter().zip(other.iter()).map(|((_, a), (_, b))| (*a, *b)).collect();
            let ratio = |f: &dyn Fn(&Cost, &Cost) -> f64| spread(pairs.iter().map(|(a, b)| f(a, b)).collect());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                peer.name(),
                ratio(&|a, b| b.wall.as_secs_f64() / a.wall.as_secs_f64().max(1e-9)),
                ratio(&|a, b| b.cpu.as_secs_f64() / a.cpu.as_secs_f64().max(1e-9)),
                ratio(&|a, b| b.max_rss_kib as f64 / (a.max_rss_kib as f64).max(1.0)),
            );
        }
    }

    fn realtime(&self, s: &mut String) {
        if self.lags.is_empty() {
            return;
        }
        let _ = write!(
            s,
            "\n## Real time: `crr serve`, scan interval {SCAN_INTERVAL}\n\n\
             Lag per change in ms, p50 / p99 / max: detection = task created − write acknowledged, \
             transfer = task done − task created (crr's state database).\n\n\
             | pair | while | changes | detection | transfer | total | not done | serve CPU s | destination |\n\
             |---|---|---|---|---|---|---|---|---|\n"
        );
        for (pair, l) in &self.lags {
            let _ = writeln!(
                s,
                "| {pair} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.label,
                l.changes,
                percentiles(&l.detection),
                percentiles(&l.transfer),
                percentiles(&l.total),
                l.not_done,
                num(l.serve.cpu.as_secs_f64()),
                match &l.verified {
                    Ok(()) => "converged".to_string(),
                    Err(e) => format!("FAILED: {}", one_line(e)),
                }
            );
        }
    }

    fn failures(&self, s: &mut String) {
        let mut lines = Vec::new();
        for r in &self.runs {
            if let Err(e) = &r.outcome {
                lines.push(format!(
                    "{} {} {} rep {}: {}",
                    r.pair,
                    r.workload,
                    r.tool.name(),
                    r.rep,
                    flat(e)
                ));
            }
        }
        for ((pair, workload, tool), r) in &self.requests {
            if let Err(e) = r {
                lines.push(format!(
                    "{pair} {workload} {} (request count run): {}",
                    tool.name(),
                    flat(e)
                ));
            }
        }
        for (pair, l) in &self.lags {
            if let Err(e) = &l.verified {
                lines.push(format!("{pair} real time ({}): {}", l.label, flat(e)));
            }
        }
        for (pair, what, c) in &self.noops {
            if let Err(e) = c {
                lines.push(format!("{pair} no-op re-run ({what}): {}", flat(e)));
            }
        }
        if lines.is_empty() {
            s.push_str("\n## Failures\n\nNone: every run and every verification passed.\n");
        } else {
            s.push_str("\n## Failures\n\n");
            for l in lines {
                let _ = writeln!(s, "- FAILED: {l}");
            }
        }
    }
}

/// The whole text on one line.
fn flat(e: &str) -> String {
    e.replace(['\n', '|'], " ")
}

/// The text on one line, cut to fit a table cell.
fn one_line(e: &str) -> String {
    let flat = flat(e);
    if flat.chars().count() > 300 {
        format!("{}…", flat.chars().take(300).collect::<String>())
    } else {
        flat
    }
}
