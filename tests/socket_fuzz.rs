//! The service socket under hostile input: a `crr serve` on two moto servers is sent random
//! bytes, invalid UTF-8, JSON of the wrong shape, lines of many MiB, more connections than it
//! takes, and connections half-closed after their last line. It must answer every bad line with
//! a clear error, not hold an oversized line in memory, keep running, and still serve a
//! well-formed client afterwards.

mod common;

use common::{Env, Rule, create_bucket};
use crr::engine::service::{MAX_CLIENTS, MAX_REQUEST};
use crr::engine::{Command, Reply};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long the service may take to answer one line.
const ANSWER: Duration = Duration::from_secs(20);

async fn world() -> (Env, common::Serve) {
    let env = Env::start().await;
    create_bucket(&env.gz, "photos", true).await;
    create_bucket(&env.sh, "photos-dr", true).await;
    env.write_config(&[Rule::new("photos-dr", "gz/photos", "sh/photos-dr")]);
    let serve = env.spawn_serve();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Listening, and past applying the rules (the rule is enabled).
    loop {
        assert!(Instant::now() < deadline, "serve never came up\n{}", serve.output());
        if env.state_dir.join("crr.sock").exists()
            && std::fs::read_to_string(&serve.stdout_path)
                .unwrap_or_default()
                .contains("replicating")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (env, serve)
}

/// A raw connection that speaks the protocol's lines by hand.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    /// Connects and reads the first line the service sends.
    async fn connect(env: &Env) -> (Raw, serde_json::Value) {
        let stream = UnixStream::connect(env.state_dir.join("crr.sock"))
            .await
            .expect("connect to crr.sock");
        let (read, writer) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(read),
            writer,
        };
        let first = raw.next().await.expect("the service sends a first line");
        (raw, first)
    }

    async fn hello(env: &Env) -> Raw {
        let (raw, first) = Raw::connect(env).await;
        assert_eq!(first["type"], "hello", "the first line is the hello: {first}");
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .await
            .expect("the service reads what is sent");
    }

    /// The next message, or None at the end of the connection.
    async fn next(&mut self) -> Option<serde_json::Value> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(ANSWER, self.reader.read_until(b'\n', &mut line))
            .await
            .expect("the service answers in time")
            .expect("reading from the service");
        if n == 0 {
            return None;
        }
        Some(serde_json::from_slice(&line).unwrap_or_else(|e| {
            panic!(
                "the service sent a line that is not JSON ({e}): {}",
                String::from_utf8_lossy(&line)
            )
        }))
    }

    /// The next message that is not a snapshot or an event.
    async fn answer(&mut self) -> Option<serde_json::Value> {
        loop {
            let msg = self.next().await?;
            if msg["type"] != "snapshot" && msg["type"] != "event" {
                return Some(msg);
            }
        }
    }
}

fn error_text(msg: &serde_json::Value) -> String {
    assert_eq!(msg["type"], "error", "expected an error, got {msg}");
    msg["message"].as_str().expect("an error has a message").to_string()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The lines a fuzzer tries: none is a message the service can act on.
fn bad_lines() -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(0x5eed_c0de);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // Random bytes (no newline inside), short and long.
    for len in [1usize, 7, 64, 1000, 65_536] {
        let mut l: Vec<u8> = (0..len)
            .map(|_| rng.u8(..))
            .map(|b| if b == b'\n' { b'?' } else { b })
            .collect();
        // A line of only whitespace is skipped by design, not an error: keep one visible byte.
        l[0] = b'#';
        lines.push(l);
    }
    // Invalid UTF-8, inside and outside a JSON string.
    lines.push(b"\xff\xfe\xfd".to_vec());
    lines.push(b"{\"type\":\"subscribe\",\"events\":true,\"snapshots\":\xc3\x28}".to_vec());
    lines.push(
        b"{\"type\":\"command\",\"id\":1,\"command\":{\"command\":\"enable_rule\",\"id\":\"\xed\xa0\x80\"}}".to_vec(),
    );
    // JSON, but not a message.
    for text in [
        "null",
        "42",
        "\"enable\"",
        "[1,2,3]",
        "{}",
        r#"{"type":"launch"}"#,
        r#"{"type":"command"}"#,
        r#"{"type":"command","id":1}"#,
        r#"{"type":"command","id":-1,"command":{"command":"enable_rule","id":"photos-dr"}}"#,
        r#"{"type":"command","id":1,"command":{"command":"format_disk"}}"#,
        r#"{"type":"command","id":1,"command":{"command":"enable_rule"}}"#,
        r#"{"type":"command","id":18446744073709551616,"command":{"command":"reload"}}"#,
        r#"{"type":"subscribe","events":"yes","snapshots":1}"#,
        r#"{"type":"hello","protocol":1,"pid":1,"version":"0"}"#,
        r#"{"type":"subscribe","events":true,"snapshots":false} trailing"#,
    ] {
        lines.push(text.as_bytes().to_vec());
    }
    // Nesting far deeper than any parser should recurse.
    lines.push([vec![b'['; 100_000], vec![b']'; 100_000]].concat());
    // A string of the wrong kind, long enough that quoting it whole would be a flood.
    lines.push(format!(r#"{{"type":"{}"}}"#, "x".repeat(500_000)).into_bytes());
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_survives_hostile_input_and_still_serves() {
    let (env, mut serve) = world().await;
    let pid = serve.pid();

    // 1. Every bad line gets one error naming the line and what a line must be; the connection
    //    stays open and a good command on it still works.
    let bad = bad_lines();
    let mut raw = Raw::hello(&env).await;
    for (i, line) in bad.iter().enumerate() {
        let mut l = line.clone();
        l.push(b'\n');
        raw.send(&l).await;
        let text = error_text(&raw.answer().await.expect("an answer to a bad line"));
        assert!(
            text.starts_with(&format!("line {} ", i + 1)) && text.contains("each line must be one JSON object"),
            "bad line {} ({:?}...) got {text}",
            i + 1,
            String::from_utf8_lossy(&line[..line.len().min(40)])
        );
        assert!(
            text.len() < 2000,
            "the error quotes too much of the line: {} bytes",
            text.len()
        );
    }
    // Valid lines with a few bytes replaced at random (never by a newline): each gets exactly
    // one answer, an error or a reply, and nothing else breaks.
    let valid: &[&[u8]] = &[
        br#"{"type":"command","id":11,"command":{"command":"enable_rule","id":"photos-dr"}}"#,
        br#"{"type":"command","id":12,"command":{"command":"migrate","id":"photos-dr","action":"pause"}}"#,
        br#"{"type":"command","id":13,"command":{"command":"retry","target":{"select":"tasks","ids":[1,2]}}}"#,
    ];
    let mut rng = fastrand::Rng::with_seed(0xf022);
    let mutants = 300;
    let mut batch = Vec::new();
    for _ in 0..mutants {
        let mut l = valid[rng.usize(..valid.len())].to_vec();
        for _ in 0..rng.usize(1..=3) {
            let at = rng.usize(..l.len());
            l[at] = loop {
                let b = rng.u8(..);
                if b != b'\n' {
                    break b;
                }
            };
        }
        batch.extend(l);
        batch.push(b'\n');
    }
    raw.send(&batch).await;
    let (mut errors, mut replies) = (0, 0);
    for _ in 0..mutants {
        let m = raw.answer().await.expect("an answer to each mutated line");
        match m["type"].as_str() {
            Some("error") => errors += 1,
            Some("reply") => replies += 1,
            _ => panic!("unexpected answer {m}"),
        }
    }
    assert!(errors > mutants / 2, "{errors} errors, {replies} replies");
    raw.send(b"{\"type\":\"command\",\"id\":7,\"command\":{\"command\":\"enable_rule\",\"id\":\"photos-dr\"}}\n")
        .await;
    let reply = raw.answer().await.expect("a reply");
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 7, "{reply}");
    assert!(
        reply["reply"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("already enabled"),
        "{reply}"
    );

    // 2. A line of 32 MiB: answered with an error once it passes the limit, thrown away as it
    //    arrives (the service's memory does not grow by its size), and the connection goes on.
    let before = rss_kib(pid);
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..32 {
        raw.send(&chunk).await;
    }
    raw.send(b"\n{\"type\":\"command\",\"id\":8,\"command\":{\"command\":\"disable_rule\",\"id\":\"no-such-rule\"}}\n")
        .await;
    let text = error_text(&raw.answer().await.expect("an answer to the long line"));
    assert!(
        text.contains(&format!("longer than {MAX_REQUEST} bytes")) && text.contains(&(32u64 << 20).to_string()),
        "{text}"
    );
    let reply = raw.answer().await.expect("a reply after the long line");
    assert_eq!(reply["id"], 8, "{reply}");
    assert_eq!(reply["reply"]["outcome"], "refused", "{reply}");
    assert!(
        reply["reply"]["reason"].as_str().unwrap_or("").contains("no-such-rule"),
        "{reply}"
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 16 * 1024,
        "the service grew from {before} KiB to {after} KiB while a 32 MiB line arrived"
    );
    drop(raw);

    // 2b. A client that floods commands and never reads a reply: the service stops reading it
    //     (its writes block) rather than holding every reply in memory (before that was
    //     bounded, 200,000 such commands grew it by 260 MiB).
    let before = rss_kib(pid);
    let mut flood = Raw::hello(&env).await;
    let line = b"{\"type\":\"command\",\"id\":1,\"command\":{\"command\":\"enable_rule\",\"id\":\"photos-dr\"}}\n";
    let lines: Vec<u8> = line.iter().copied().cycle().take(line.len() * 60_000).collect();
    // Bounded by the service's back-pressure, or by this test's patience.
    let _ = tokio::time::timeout(Duration::from_secs(5), flood.writer.write_all(&lines)).await;
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "the service grew from {before} KiB to {after} KiB while a client sent commands without reading"
    );
    drop(flood);

    // 3. A client that half-closes (sends its lines, then shuts its writing side, as
    //    `printf ... | nc -U` does) still gets every answer, then the end of the connection.
    let mut half = Raw::hello(&env).await;
    half.send(b"not json\n{\"type\":\"command\",\"id\":9,\"command\":{\"command\":\"enable_rule\",\"id\":\"photos-dr\"}}\n\xff")
        .await;
    half.writer.shutdown().await.expect("shut the writing side");
    let mut answers = Vec::new();
    while let Some(msg) = half.answer().await {
        answers.push(msg);
    }
    assert_eq!(answers.len(), 3, "one answer per line, then the end: {answers:?}");
    assert!(error_text(&answers[0]).starts_with("line 1 "), "{answers:?}");
    let last = answers
        .iter()
        .filter(|m| m["type"] == "error")
        .map(error_text)
        .collect::<Vec<_>>();
    assert!(last.iter().any(|t| t.starts_with("line 3 ")), "{answers:?}");
    assert!(
        answers.iter().any(|m| m["type"] == "reply" && m["id"] == 9),
        "the reply to the command sent before the half-close: {answers:?}"
    );

    // 4. More connections than the service takes: at most MAX_CLIENTS get a hello, the rest a
    //    clear error and the end of the connection.
    let mut open = Vec::new();
    let mut turned_away = Vec::new();
    for _ in 0..MAX_CLIENTS + 16 {
        let (mut raw, first) = Raw::connect(&env).await;
        if first["type"] == "hello" {
            open.push(raw);
        } else {
            let text = error_text(&first);
            assert!(
                text.contains("clients are connected already") && text.contains("try again"),
                "{text}"
            );
            assert!(raw.next().await.is_none(), "a turned-away connection is closed");
            turned_away.push(text);
        }
    }
    // Connections of the steps above may still be winding down and hold a slot or two.
    assert!(
        open.len() <= MAX_CLIENTS && open.len() + 3 >= MAX_CLIENTS,
        "{} connections taken: {turned_away:?}",
        open.len()
    );
    assert_eq!(turned_away.len(), MAX_CLIENTS + 16 - open.len());
    // Half of them send garbage and go away at once, without reading.
    for mut raw in open.drain(..MAX_CLIENTS / 2) {
        let _ = raw.writer.write_all(b"\x00\x01garbage\n").await;
    }
    drop(open);

    // 5. The service runs on, and a well-formed client drives it as before.
    assert_eq!(serve.try_exit_code(), None, "crr serve exited\n{}", serve.output());
    let handle = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Slots are freed as the closed connections are noticed.
            match crr::engine::client::ServiceClient::connect(&env.state_dir).await {
                Ok(Some(client)) => break client.into_handle().await.expect("a handle on the service"),
                Ok(None) => panic!("the service stopped listening\n{}", serve.output()),
                Err(e) => {
                    assert!(Instant::now() < deadline, "no client is taken any more: {e:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    // The engine may still be working through the commands of the clients above: "busy, try
    // again in a moment" is an answer a well-formed client acts on.
    let mut reply = handle.send(Command::EnableRule { id: "photos-dr".into() }).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while matches!(&reply, Reply::Refused { reason, .. } if reason.contains("busy")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        reply = handle.send(Command::EnableRule { id: "photos-dr".into() }).await;
    }
    assert!(
        matches!(&reply, Reply::Done { message } if message.contains("already enabled")),
        "{reply:?}"
    );
    let status = env.status_json().await;
    assert_eq!(
        common::find_rule_status(&status, "photos-dr")["enabled"],
        true,
        "{status}"
    );
    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0, "{}", serve.output());
}
