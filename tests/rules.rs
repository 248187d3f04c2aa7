//! Operating rules and the engine from the command line: `crr rule list|enable|disable` (config
//! rewritten with comments kept), re-enable semantics, `crr serve` with SIGTERM, the one-engine
//! lock, `crr status` beside a running engine, and a run whose destination is down.
//! Contract: DESIGN.md sections 4, 5, 6 and 7.

mod common;

use std::time::Duration;

use common::*;

/// The `[[rule]]` tables of a config file, parsed.
fn parsed_rules(text: &str) -> Vec<toml::Table> {
    let table: toml::Table =
        toml::from_str(text).unwrap_or_else(|e| panic!("the config file is no longer valid TOML: {e}\n{text}"));
    table
        .get("rule")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().map(|r| r.as_table().expect("rule table").clone()).collect())
        .unwrap_or_default()
}

fn rule_enabled(text: &str, id: &str) -> bool {
    let rules = parsed_rules(text);
    let rule = rules
        .iter()
        .find(|r| r.get("id").and_then(|v| v.as_str()) == Some(id))
        .unwrap_or_else(|| panic!("rule {id} missing from the config file\n{text}"));
    rule.get("enabled")
        .and_then(|v| v.as_bool())
        .unwrap_or_else(|| panic!("rule {id} has no boolean `enabled`\n{text}"))
}

/// Everything in the file except the rules, to check that a rule edit leaves it alone.
fn non_rule_part(text: &str) -> toml::Table {
    let mut table: toml::Table = toml::from_str(text).expect("valid TOML");
    table.remove("rule");
    table
}

#[tokio::test]
async fn rule_list_shows_every_rule() {
    let env = Env::start().await;
    for b in ["list-src-a", "list-src-b"] {
        create_bucket(&env.gz, b, true).await;
    }
    for b in ["list-dst-a", "list-dst-b"] {
        create_bucket(&env.sh, b, true).await;
    }
    env.write_config(&[
        Rule::new("list-rule-a", "gz/list-src-a", "sh/list-dst-a"),
        Rule::new("list-rule-b", "gz/list-src-b", "sh/list-dst-b")
            .prefixes(&["logs/"])
            .enabled(false),
    ]);
    let out = env.crr(&["rule", "list"]).await;
    out.assert_ok();
    for needle in [
        "list-rule-a",
        "list-rule-b",
        "gz/list-src-a",
        "sh/list-dst-a",
        "gz/list-src-b",
        "sh/list-dst-b",
    ] {
        assert!(
            out.stdout.contains(needle),
            "`crr rule list` should show {needle}\n{}",
            out.describe()
        );
    }
}

#[tokio::test]
async fn disable_and_enable_rewrite_the_config_keeping_comments() {
    let env = Env::start().await;
    create_bucket(&env.gz, "photos", true).await;
    create_bucket(&env.sh, "photos-dr", true).await;
    create_bucket(&env.gz, "docs", true).await;
    create_bucket(&env.sh, "docs-dr", true).await;
    let text = env
        .config_text(&[
            Rule::new("photos", "gz/photos", "sh/photos-dr").comment("keep me: the photos rule replicates pictures"),
            Rule::new("docs", "gz/docs", "sh/docs-dr").comment("the docs rule stays as it is"),
        ])
        .replace("id = \"photos\"\n", "id = \"photos\"   # inline comment on the id\n");
    env.write_config_text(&text);
    let comments = [
        "# crr integration test config",
        "# keep me: the photos rule replicates pictures",
        "# inline comment on the id",
        "# the docs rule stays as it is",
    ];
    env.run_once().await;

    env.crr(&["rule", "disable", "photos"]).await.assert_ok();
    let disabled = env.read_config_text();
    for c in comments {
        assert!(
            disabled.contains(c),
            "comment `{c}` lost by `rule disable`:\n{disabled}"
        );
    }
    assert!(!rule_enabled(&disabled, "photos"), "photos is disabled:\n{disabled}");
    assert!(rule_enabled(&disabled, "docs"), "docs is untouched:\n{disabled}");
    assert!(
        disabled.contains("enabled = false"),
        "the file says `enabled = false`:\n{disabled}"
    );
    assert_eq!(
        non_rule_part(&disabled),
        non_rule_part(&text),
        "engine and endpoints are unchanged"
    );
    let rule_list = env.crr(&["rule", "list"]).await;
    rule_list.assert_ok();

    let out = env.crr(&["rule", "enable", "photos"]).await;
    out.assert_ok();
    let enabled = env.read_config_text();
    for c in comments {
        assert!(enabled.contains(c), "comment `{c}` lost by `rule enable`:\n{enabled}");
    }
    assert!(rule_enabled(&enabled, "photos"), "photos is enabled:\n{enabled}");
    assert!(rule_enabled(&enabled, "docs"), "docs is untouched:\n{enabled}");
    assert!(!enabled.contains("enabled = false"), "{enabled}");
    assert_eq!(non_rule_part(&enabled), non_rule_part(&text));

    // The rewritten file is still a good config, and no temporary files are left beside it.
    env.crr(&["check"]).await.assert_ok();
    let leftovers: Vec<String> = std::fs::read_dir(env.config_path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("crr.toml") && n != "crr.toml")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[tokio::test]
async fn enabling_or_disabling_an_unknown_rule_is_refused() {
    let env = Env::start().await;
    create_bucket(&env.gz, "known-src", true).await;
    create_bucket(&env.sh, "known-dst", true).await;
    let text = env.write_config(&[Rule::new("known", "gz/known-src", "sh/known-dst")]);
    for action in ["enable", "disable"] {
        let out = env.crr(&["rule", action, "no-such-rule"]).await;
        out.assert_code(2);
        assert!(
            out.stderr.contains("no-such-rule"),
            "the error names the rule\n{}",
            out.describe()
        );
    }
    assert_eq!(env.read_config_text(), text, "the config file is unchanged");
}

#[tokio::test]
async fn reenabled_rule_replicates_only_writes_after_reenabling() {
    let env = Env::start().await;
    create_bucket(&env.gz, "flip-src", true).await;
    create_bucket(&env.sh, "flip-dst", true).await;
    env.write_config(&[Rule::new("flip", "gz/flip-src", "sh/flip-dst")]);
    env.run_once().await;
    let first_enable_point = env.rule_status("flip").await["enable_point"].clone();
    assert!(first_enable_point.is_string(), "{first_enable_point}");

    put(&env.gz, "flip-src", "a.txt", "a1").await;
    env.run_once().await;
    assert_eq!(
        get_bytes(&env.sh, "flip-dst", "a.txt").await.as_deref(),
        Some(&b"a1"[..])
    );

    env.crr(&["rule", "disable", "flip"]).await.assert_ok();
    assert_eq!(env.rule_status("flip").await["enabled"], false);
    put(&env.gz, "flip-src", "b.txt", "written while disabled").await;
    put(&env.gz, "flip-src", "a.txt", "a2 while disabled").await;
    env.run_once().await;
    assert!(
        key_versions(&env.sh, "flip-dst", "b.txt").await.is_empty(),
        "a disabled rule replicates nothing"
    );

    // Make sure the new enable point is a different second from the first one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = env.crr(&["rule", "enable", "flip"]).await;
    out.assert_ok();
    assert!(
        out.combined().contains("crr migrate start flip"),
        "re-enabling should offer a migration for the writes it will not replicate\n{}",
        out.describe()
    );
    let status = env.rule_status("flip").await;
    assert_eq!(status["enabled"], true, "{status}");
    assert!(status["enable_point"].is_string(), "{status}");
    assert_ne!(
        status["enable_point"], first_enable_point,
        "re-enabling sets a new enable point"
    );

    put(&env.gz, "flip-src", "c.txt", "after re-enable").await;
    env.run_once().await;

    assert!(
        key_versions(&env.sh, "flip-dst", "b.txt").await.is_empty(),
        "writes made while the rule was off are not replicated"
    );
    assert_eq!(
        get_bytes(&env.sh, "flip-dst", "a.txt").await.as_deref(),
        Some(&b"a1"[..]),
        "the version written while disabled is not replicated"
    );
    assert_eq!(
        get_bytes(&env.sh, "flip-dst", "c.txt").await.as_deref(),
        Some(&b"after re-enable"[..]),
        "writes after re-enabling are replicated"
    );
}

#[tokio::test]
async fn serve_replicates_new_writes_and_stops_on_sigterm() {
    let env = Env::start().await;
    create_bucket(&env.gz, "live-src", true).await;
    create_bucket(&env.sh, "live-dst", true).await;
    env.write_config(&[Rule::new("live", "gz/live-src", "sh/live-dst")]);
    env.run_once().await; // enable point

    let mut serve = env.spawn_serve();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        serve.try_exit_code(),
        None,
        "crr serve exited right away\n{}",
        serve.output()
    );

    let first: Vec<(String, String)> = (0..5)
        .map(|i| (format!("live/{i}.txt"), format!("payload {i}")))
        .collect();
    for (k, v) in &first {
        put(&env.gz, "live-src", k, v.clone()).await;
    }
    let (first_ref, env_ref) = (&first, &env);
    let replicated = wait_until(Duration::from_secs(30), || async move {
        for (k, v) in first_ref {
            if get_bytes(&env_ref.sh, "live-dst", k).await.as_deref() != Some(v.as_bytes()) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        replicated,
        "crr serve should replicate new writes within a few scan intervals\n{}",
        serve.output()
    );

    // It keeps going: a later write is picked up too.
    put(&env.gz, "live-src", "live/later.txt", "later").await;
    let later = wait_until(Duration::from_secs(30), || async move {
        get_bytes(&env_ref.sh, "live-dst", "live/later.txt").await.as_deref() == Some(&b"later"[..])
    })
    .await;
    assert!(later, "a later write is replicated too\n{}", serve.output());

    let code = serve.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "crr serve exits 0 on SIGTERM\n{}", serve.output());
}

#[tokio::test]
async fn one_engine_per_state_dir_and_status_works_beside_it() {
    let env = Env::start().await;
    create_bucket(&env.gz, "lock-src", true).await;
    create_bucket(&env.sh, "lock-dst", true).await;
    env.write_config(&[Rule::new("locked", "gz/lock-src", "sh/lock-dst")]);
    env.run_once().await;

    let mut serve = env.spawn_serve();
    // Wait until the engine in `serve` demonstrably works.
    put(&env.gz, "lock-src", "probe.txt", "probe").await;
    let env_ref = &env;
    let up = wait_until(Duration::from_secs(30), || async move {
        get_bytes(&env_ref.sh, "lock-dst", "probe.txt").await.is_some()
    })
    .await;
    assert!(up, "crr serve did not replicate the probe\n{}", serve.output());

    let second = env.crr(&["run", "--once"]).await;
    assert_ne!(
        second.code,
        0,
        "a second engine on the same state dir must be refused\n{}",
        second.describe()
    );
    let msg = second.combined().to_lowercase();
    assert!(
        msg.contains("lock") || msg.contains("running"),
        "the refusal should say an engine is running / the state is locked\n{}",
        second.describe()
    );

    // Readers work while the engine runs.
    let status = env.crr(&["status", "--json"]).await;
    status.assert_ok();
    let rule = find_rule_status(&status.json(), "locked");
    assert_eq!(rule["enabled"], true, "{rule}");
    let plain = env.crr(&["status"]).await;
    plain.assert_ok();
    assert!(plain.stdout.contains("locked"), "{}", plain.describe());

    assert_eq!(
        serve.try_exit_code(),
        None,
        "the refused second engine must not stop the running one\n{}",
        serve.output()
    );
    let code = serve.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "crr serve exits 0 on SIGTERM\n{}", serve.output());

    // Once serve is gone the lock is free again.
    env.run_once().await;
}

#[tokio::test]
async fn unreachable_destination_fails_the_run_and_names_the_task() {
    let mut env = Env::start().await;
    create_bucket(&env.gz, "down-src", true).await;
    create_bucket(&env.sh, "down-dst", true).await;
    let opts = ConfigOpts {
        max_attempts: 2,
        ..ConfigOpts::default()
    };
    env.write_config_with(&opts, &[Rule::new("down", "gz/down-src", "sh/down-dst")]);
    env.run_once().await;

    put(&env.gz, "down-src", "fail/unlucky file.txt", "never arrives").await;
    env.sh.stop();

    let out = env.crr(&["run", "--once"]).await;
    out.assert_code(1);
    let all = out.combined();
    assert!(
        all.contains("fail/unlucky file.txt"),
        "the summary should name the failed task's key\n{}",
        out.describe()
    );
    let lower = all.to_lowercase();
    assert!(
        ["refused", "connect", "dispatch", "unreachable", "timeout", "timed out"]
            .iter()
            .any(|w| lower.contains(w)),
        "the summary should say why the task failed\n{}",
        out.describe()
    );

    let rule = env.rule_status("down").await;
    assert_eq!(rule["failed_tasks"], 1, "{rule}");
    assert_eq!(rule["replicated_objects"], 0, "{rule}");
}

#[tokio::test]
async fn enabling_a_rule_runs_preflight_first() {
    let env = Env::start().await;
    create_bucket(&env.gz, "pre-src", true).await;
    create_bucket(&env.sh, "pre-dst-unversioned", false).await;
    let text = env.write_config(&[Rule::new("pre-rule", "gz/pre-src", "sh/pre-dst-unversioned").enabled(false)]);

    let out = env.crr(&["rule", "enable", "pre-rule"]).await;
    out.assert_code(2);
    assert!(
        out.stderr.contains("pre-rule") && out.stderr.contains("pre-dst-unversioned"),
        "the refusal names the rule and the bucket\n{}",
        out.describe()
    );
    assert_eq!(
        env.read_config_text(),
        text,
        "a refused enable leaves the config file unchanged"
    );
    assert!(!rule_enabled(&env.read_config_text(), "pre-rule"));
}

#[tokio::test]
async fn rule_changes_reach_a_running_serve() {
    let env = Env::start().await;
    create_bucket(&env.gz, "ctl-src", true).await;
    create_bucket(&env.sh, "ctl-dst", true).await;
    env.write_config(&[Rule::new("ctl", "gz/ctl-src", "sh/ctl-dst")]);
    env.run_once().await;

    let mut serve = env.spawn_serve();
    let env_ref = &env;
    put(&env.gz, "ctl-src", "probe.txt", "probe").await;
    let up = wait_until(Duration::from_secs(30), || async move {
        get_bytes(&env_ref.sh, "ctl-dst", "probe.txt").await.is_some()
    })
    .await;
    assert!(up, "crr serve did not replicate the probe\n{}", serve.output());

    // Disabled while serve runs: the engine applies it within 2 seconds.
    env.crr(&["rule", "disable", "ctl"]).await.assert_ok();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    put(&env.gz, "ctl-src", "while-off.txt", "not replicated").await;
    // Several scan intervals pass.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        key_versions(&env.sh, "ctl-dst", "while-off.txt").await.is_empty(),
        "a rule disabled while serve runs replicates nothing more\n{}",
        serve.output()
    );

    // Enabled again while serve runs: writes after the command are replicated.
    env.crr(&["rule", "enable", "ctl"]).await.assert_ok();
    put(&env.gz, "ctl-src", "after-on.txt", "replicated").await;
    let on = wait_until(Duration::from_secs(30), || async move {
        get_bytes(&env_ref.sh, "ctl-dst", "after-on.txt").await.as_deref() == Some(&b"replicated"[..])
    })
    .await;
    assert!(
        on,
        "writes after re-enabling are replicated by the running engine\n{}",
        serve.output()
    );
    assert!(
        key_versions(&env.sh, "ctl-dst", "while-off.txt").await.is_empty(),
        "writes made while the rule was off stay unreplicated"
    );

    let code = serve.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "crr serve exits 0 on SIGTERM\n{}", serve.output());
}
