//! Runs one child process and measures it: wall time from spawn to exit, the CPU time the kernel
//! accounts to that child (and to the descendants it waited for) from `wait4`'s rusage, and its
//! peak RSS, sampled from `/proc/PID/status` (VmHWM) every 5 ms while it runs. (rusage's
//! ru_maxrss is no use here: Linux carries the forking parent's RSS into the child's figure, so
//! every child of a harness that once held large bodies would show the harness's size.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one child cost.
#[derive(Clone, Debug, Default)]
pub struct Cost {
    pub wall: Duration,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident set size, KiB.
    pub max_rss_kib: u64,
}

impl Cost {
    /// Two children run one after the other (the AWS CLI's two hops): times add, the peak RSS
    /// is the larger one.
    pub fn then(&self, next: &Cost) -> Cost {
        Cost {
            wall: self.wall + next.wall,
            cpu: self.cpu + next.cpu,
            max_rss_kib: self.max_rss_kib.max(next.max_rss_kib),
        }
    }
}

/// A child's cost and how it ended.
#[derive(Clone, Debug)]
pub struct Exit {
    pub cost: Cost,
    /// Exit code; negative: killed by that signal.
    pub code: i32,
    pub timed_out: bool,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == 0 && !self.timed_out
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// A child being measured.
pub struct Running {
    pid: libc::pid_t,
    started: Instant,
    timed_out: bool,
    /// The highest VmHWM seen, KiB.
    hwm_kib: u64,
}

/// The child's peak RSS so far (VmHWM, KiB), if it still runs.
fn vm_hwm(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

impl Running {
    /// Spawns `cmd` with its stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> std::io::Result<Running> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let started = Instant::now();
        let child = cmd.spawn()?;
        let pid = child.id() as libc::pid_t;
        // The child is reaped with wait4 below; std's handle must not wait for it again.
        drop(child);
        Ok(Running {
            pid,
            started,
            timed_out: false,
            hwm_kib: 0,
        })
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: our own child's pid, not yet reaped (only `wait` reaps it).
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Waits for the child to exit; after `timeout` it is killed with SIGKILL (its own pid).
    pub async fn wait(mut self, timeout: Duration) -> std::io::Result<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            // Before reaping: once reaped, the pid may be someone else's.
            if let Some(kib) = vm_hwm(self.pid) {
                self.hwm_kib = self.hwm_kib.max(kib);
            }
            let mut status: libc::c_int = 0;
            // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: pid is our own child; status and usage point at live locals.
            let reaped = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == self.pid {
                let wall = self.started.elapsed();
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    -libc::WTERMSIG(status)
                } else {
                    -1
                };
                return Ok(Exit {
                    cost: Cost {
                        wall,
                        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
                        max_rss_kib: self.hwm_kib,
                    },
                    code,
                    timed_out: self.timed_out,
                });
            }
            if reaped < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !self.timed_out && Instant::now() > deadline {
                self.timed_out = true;
                self.signal(libc::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the child to exit; after that it is killed
    /// with SIGKILL and `timed_out` is set.
    pub async fn stop(self, grace: Duration) -> std::io::Result<Exit> {
        self.signal(libc::SIGTERM);
        self.wait(grace).await
    }
}

/// Spawns `cmd` with its output appended to `log`, waits for it (killing it after `timeout`)
/// and returns its cost.
pub async fn run(cmd: Command, log: &Path, timeout: Duration) -> std::io::Result<Exit> {
    Running::spawn(cmd, log)?.wait(timeout).await
}

/// The last `lines` lines of a log file, to explain a failure.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
