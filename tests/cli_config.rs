//! Config parsing and validation, preflight refusals (`crr check`), and how the config and
//! state locations are chosen (flags before/after the subcommand, `CRR_CONFIG`/`CRR_STATE`,
//! XDG defaults). Contract: DESIGN.md sections 3, 6 and 7.

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// config parse errors: no S3 needed, the file is rejected before anything is contacted
// ---------------------------------------------------------------------------------------------

/// A complete, valid config whose endpoints point at a closed loopback port.
fn offline_config(engine_extra: &str, endpoint_extra: &str, rule_extra: &str) -> String {
    format!(
        "# config used by the parse-error tests\n\
         [engine]\n\
         workers = 4\n\
         multipart_threshold = \"5MiB\"\n\
         part_size = \"5MiB\"\n\
         scan_interval = \"1s\"\n\
         max_attempts = 3\n\
         {engine_extra}\
         \n\
         [[endpoint]]\n\
         name = \"gz\"\n\
         region = \"ap-guangzhou\"\n\
         url = \"http://127.0.0.1:9\"\n\
         path_style = true\n\
         {endpoint_extra}\
         \n\
         [[endpoint]]\n\
         name = \"sh\"\n\
         region = \"ap-shanghai\"\n\
         url = \"http://127.0.0.1:9\"\n\
         path_style = true\n\
         \n\
         [[rule]]\n\
         id = \"photos-dr\"\n\
         source = \"gz/photos\"\n\
         destination = \"sh/photos-dr\"\n\
         operations = \"all\"\n\
         {rule_extra}\
         enabled = true\n"
    )
}

/// Write `text` as a config in a fresh temp dir and run `crr check` on it.
async fn check_offline(text: &str) -> (tempfile::TempDir, std::path::PathBuf, CrrOutput) {
    let dir = tempfile::Builder::new().prefix("crr-cfg-").tempdir().expect("temp dir");
    let path = dir.path().join("crr.toml");
    std::fs::write(&path, text).expect("write config");
    let state = dir.path().join("state");
    let out = crr_raw(
        dir.path(),
        &[
            "--config",
            path.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "check",
        ],
        &[],
    )
    .await;
    (dir, path, out)
}

#[tokio::test]
async fn unknown_key_in_engine_is_an_error_with_file_and_line() {
    let text = offline_config("wrokers = 8\n", "", "");
    let line = line_of(&text, "wrokers");
    let (_dir, path, out) = check_offline(&text).await;
    out.assert_code(2);
    assert_mentions_file_and_line(&out, &path, line);
    assert!(
        out.stderr.contains("wrokers"),
        "the error should name the unknown key\n{}",
        out.describe()
    );
}

#[tokio::test]
async fn unknown_key_in_rule_is_an_error_with_file_and_line() {
    let text = offline_config("", "", "colour = \"blue\"\n");
    let line = line_of(&text, "colour");
    let (_dir, path, out) = check_offline(&text).await;
    out.assert_code(2);
    assert_mentions_file_and_line(&out, &path, line);
    assert!(
        out.stderr.contains("colour"),
        "the error should name the unknown key\n{}",
        out.describe()
    );
}

#[tokio::test]
async fn unknown_key_in_endpoint_is_an_error_with_file_and_line() {
    let text = offline_config("", "signature = \"v2\"\n", "");
    let line = line_of(&text, "signature");
    let (_dir, path, out) = check_offline(&text).await;
    out.assert_code(2);
    assert_mentions_file_and_line(&out, &path, line);
    assert!(
        out.stderr.contains("signature"),
        "the error should name the unknown key\n{}",
        out.describe()
    );
}

#[tokio::test]
async fn bad_size_string_is_an_error_with_file_and_line() {
    let text = offline_config("", "", "").replace("part_size = \"5MiB\"", "part_size = \"lots\"");
    let line = line_of(&text, "part_size");
    let (_dir, path, out) = check_offline(&text).await;
    out.assert_code(2);
    assert_mentions_file_and_line(&out, &path, line);
}

#[tokio::test]
async fn bad_type_is_an_error_with_file_and_line() {
    let text = offline_config("", "", "").replace("workers = 4", "workers = \"four\"");
    let line = line_of(&text, "workers");
    let (_dir, path, out) = check_offline(&text).await;
    out.assert_code(2);
    assert_mentions_file_and_line(&out, &path, line);
}

#[tokio::test]
async fn toml_syntax_error_is_an_error_with_file_and_line() {
    let text = offline_config("", "", "").replace("scan_interval = \"1s\"", "scan_interval = 1s");
    let line = line_of(&text, "scan_interval");
    let (_dir, path, out) = check_offline(&text).await;
    out.assert_code(2);
    assert_mentions_file_and_line(&out, &path, line);
}

#[tokio::test]
async fn bad_operations_value_is_an_error_with_file_and_line() {
    let text = offline_config("", "", "").replace("operations = \"all\"", "operations = \"most\"");
    let line = line_of(&text, "operations");
    let (_dir, path, out) = check_offline(&text).await;
    out.assert_code(2);
    assert_mentions_file_and_line(&out, &path, line);
}

#[tokio::test]
async fn missing_config_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("does-not-exist.toml");
    let state = dir.path().join("state");
    let out = crr_raw(
        dir.path(),
        &[
            "--config",
            path.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "check",
        ],
        &[],
    )
    .await;
    out.assert_code(2);
    assert!(
        out.stderr.contains(&path.display().to_string()),
        "the error should name the missing file\n{}",
        out.describe()
    );
}

#[tokio::test]
async fn unknown_subcommand_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = crr_raw(dir.path(), &["frobnicate"], &[]).await;
    out.assert_code(2);
}

// ---------------------------------------------------------------------------------------------
// preflight refusals: real buckets on two moto servers, one fault per test
// ---------------------------------------------------------------------------------------------

/// Write the config for `rules`, run `crr check`, expect exit 2.
async fn check_refuses(env: &Env, rules: &[Rule]) -> CrrOutput {
    env.write_config(rules);
    let out = env.crr(&["check"]).await;
    out.assert_code(2);
    out
}

fn assert_stderr_names(out: &CrrOutput, what: &str) {
    assert!(
        out.stderr.contains(what),
        "stderr should name `{what}`\n{}",
        out.describe()
    );
}

fn assert_stderr_names_one_of(out: &CrrOutput, options: &[&str]) {
    assert!(
        options.iter().any(|o| out.stderr.contains(o)),
        "stderr should name one of {options:?}\n{}",
        out.describe()
    );
}

#[tokio::test]
async fn check_accepts_a_good_config() {
    let env = Env::start().await;
    create_bucket(&env.gz, "good-src", true).await;
    create_bucket(&env.sh, "good-dst", true).await;
    env.write_config(&[Rule::new("good-rule", "gz/good-src", "sh/good-dst")]);
    env.crr(&["check"]).await.assert_ok();
}

#[tokio::test]
async fn check_accepts_several_rules_between_the_same_pair() {
    let env = Env::start().await;
    create_bucket(&env.gz, "pair-src", true).await;
    create_bucket(&env.sh, "pair-dst", true).await;
    env.write_config(&[
        Rule::new("pair-logs", "gz/pair-src", "sh/pair-dst").prefixes(&["logs/"]),
        Rule::new("pair-img", "gz/pair-src", "sh/pair-dst").prefixes(&["img/", "video/"]),
    ]);
    env.crr(&["check"]).await.assert_ok();
}

#[tokio::test]
async fn check_refuses_missing_source_bucket() {
    let env = Env::start().await;
    create_bucket(&env.sh, "exists-dst", true).await;
    let out = check_refuses(
        &env,
        &[Rule::new("missing-src-rule", "gz/no-such-src", "sh/exists-dst")],
    )
    .await;
    assert_stderr_names(&out, "missing-src-rule");
    assert_stderr_names(&out, "no-such-src");
}

#[tokio::test]
async fn check_refuses_missing_destination_bucket() {
    let env = Env::start().await;
    create_bucket(&env.gz, "exists-src", true).await;
    let out = check_refuses(
        &env,
        &[Rule::new("missing-dst-rule", "gz/exists-src", "sh/no-such-dst")],
    )
    .await;
    assert_stderr_names(&out, "missing-dst-rule");
    assert_stderr_names(&out, "no-such-dst");
}

#[tokio::test]
async fn check_refuses_source_without_versioning() {
    let env = Env::start().await;
    create_bucket(&env.gz, "unversioned-src", false).await;
    create_bucket(&env.sh, "versioned-dst", true).await;
    let out = check_refuses(
        &env,
        &[Rule::new("nover-src-rule", "gz/unversioned-src", "sh/versioned-dst")],
    )
    .await;
    assert_stderr_names(&out, "nover-src-rule");
    assert_stderr_names(&out, "unversioned-src");
}

#[tokio::test]
async fn check_refuses_destination_without_versioning() {
    let env = Env::start().await;
    create_bucket(&env.gz, "versioned-src", true).await;
    create_bucket(&env.sh, "unversioned-dst", false).await;
    let out = check_refuses(
        &env,
        &[Rule::new("nover-dst-rule", "gz/versioned-src", "sh/unversioned-dst")],
    )
    .await;
    assert_stderr_names(&out, "nover-dst-rule");
    assert_stderr_names(&out, "unversioned-dst");
}

#[tokio::test]
async fn check_refuses_same_region() {
    // Both endpoints (and their servers' buckets) in ap-guangzhou.
    let env = Env::start_regions(GZ_REGION, GZ_REGION).await;
    create_bucket(&env.gz, "same-src", true).await;
    create_bucket(&env.sh, "same-dst", true).await;
    let out = check_refuses(&env, &[Rule::new("same-region-rule", "gz/same-src", "sh/same-dst")]).await;
    assert_stderr_names(&out, "same-region-rule");
    assert_stderr_names_one_of(&out, &["same-src", "same-dst"]);
}

#[tokio::test]
async fn check_refuses_a_chain() {
    let env = Env::start().await;
    create_bucket(&env.gz, "chain-first", true).await;
    create_bucket(&env.sh, "chain-middle", true).await;
    create_bucket(&env.gz, "chain-last", true).await;
    let out = check_refuses(
        &env,
        &[
            Rule::new("chain-rule-ab", "gz/chain-first", "sh/chain-middle"),
            Rule::new("chain-rule-bc", "sh/chain-middle", "gz/chain-last"),
        ],
    )
    .await;
    assert_stderr_names_one_of(&out, &["chain-rule-ab", "chain-rule-bc"]);
    assert_stderr_names(&out, "chain-middle");
}

#[tokio::test]
async fn check_refuses_a_second_destination_for_one_source() {
    let env = Env::start().await;
    create_bucket(&env.gz, "fan-src", true).await;
    create_bucket(&env.sh, "fan-dst-one", true).await;
    create_bucket(&env.sh, "fan-dst-two", true).await;
    let out = check_refuses(
        &env,
        &[
            Rule::new("fan-rule-one", "gz/fan-src", "sh/fan-dst-one").prefixes(&["a/"]),
            Rule::new("fan-rule-two", "gz/fan-src", "sh/fan-dst-two").prefixes(&["b/"]),
        ],
    )
    .await;
    assert_stderr_names_one_of(&out, &["fan-rule-one", "fan-rule-two"]);
    assert_stderr_names(&out, "fan-src");
}

#[tokio::test]
async fn check_refuses_a_second_source_for_one_destination() {
    let env = Env::start().await;
    create_bucket(&env.gz, "merge-src-one", true).await;
    create_bucket(&env.gz, "merge-src-two", true).await;
    create_bucket(&env.sh, "merge-dst", true).await;
    let out = check_refuses(
        &env,
        &[
            Rule::new("merge-rule-one", "gz/merge-src-one", "sh/merge-dst"),
            Rule::new("merge-rule-two", "gz/merge-src-two", "sh/merge-dst"),
        ],
    )
    .await;
    assert_stderr_names_one_of(&out, &["merge-rule-one", "merge-rule-two"]);
    assert_stderr_names(&out, "merge-dst");
}

#[tokio::test]
async fn check_refuses_whole_bucket_rule_beside_another_rule() {
    let env = Env::start().await;
    create_bucket(&env.gz, "whole-src", true).await;
    create_bucket(&env.sh, "whole-dst", true).await;
    let out = check_refuses(
        &env,
        &[
            Rule::new("whole-rule", "gz/whole-src", "sh/whole-dst"),
            Rule::new("part-rule", "gz/whole-src", "sh/whole-dst").prefixes(&["logs/"]),
        ],
    )
    .await;
    assert_stderr_names_one_of(&out, &["whole-rule", "part-rule"]);
    assert_stderr_names(&out, "whole-src");
}

#[tokio::test]
async fn check_refuses_overlapping_prefixes() {
    let env = Env::start().await;
    create_bucket(&env.gz, "overlap-src", true).await;
    create_bucket(&env.sh, "overlap-dst", true).await;
    let out = check_refuses(
        &env,
        &[
            Rule::new("overlap-logs", "gz/overlap-src", "sh/overlap-dst").prefixes(&["logs/"]),
            Rule::new("overlap-2024", "gz/overlap-src", "sh/overlap-dst").prefixes(&["logs/2024/"]),
        ],
    )
    .await;
    assert_stderr_names_one_of(&out, &["overlap-logs", "overlap-2024"]);
    assert_stderr_names(&out, "overlap-src");
}

#[tokio::test]
async fn check_refuses_more_than_ten_prefixes() {
    let env = Env::start().await;
    create_bucket(&env.gz, "many-src", true).await;
    create_bucket(&env.sh, "many-dst", true).await;
    let prefixes: Vec<String> = (0..11).map(|i| format!("p{i:02}/")).collect();
    let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let out = check_refuses(
        &env,
        &[Rule::new("many-prefixes", "gz/many-src", "sh/many-dst").prefixes(&refs)],
    )
    .await;
    assert_stderr_names(&out, "many-prefixes");
}

#[tokio::test]
async fn check_accepts_exactly_ten_prefixes() {
    let env = Env::start().await;
    create_bucket(&env.gz, "ten-src", true).await;
    create_bucket(&env.sh, "ten-dst", true).await;
    let prefixes: Vec<String> = (0..10).map(|i| format!("p{i:02}/")).collect();
    let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    env.write_config(&[Rule::new("ten-prefixes", "gz/ten-src", "sh/ten-dst").prefixes(&refs)]);
    env.crr(&["check"]).await.assert_ok();
}

#[tokio::test]
async fn check_refuses_an_empty_prefix_in_the_list() {
    let env = Env::start().await;
    create_bucket(&env.gz, "empty-src", true).await;
    create_bucket(&env.sh, "empty-dst", true).await;
    let out = check_refuses(
        &env,
        &[Rule::new("empty-prefix", "gz/empty-src", "sh/empty-dst").prefixes(&["logs/", ""])],
    )
    .await;
    assert_stderr_names(&out, "empty-prefix");
}

#[tokio::test]
async fn check_refuses_a_duplicate_id() {
    let env = Env::start().await;
    create_bucket(&env.gz, "dup-src", true).await;
    create_bucket(&env.sh, "dup-dst", true).await;
    let out = check_refuses(
        &env,
        &[
            Rule::new("dup-rule", "gz/dup-src", "sh/dup-dst").prefixes(&["a/"]),
            Rule::new("dup-rule", "gz/dup-src", "sh/dup-dst").prefixes(&["b/"]),
        ],
    )
    .await;
    assert_stderr_names(&out, "dup-rule");
}

#[tokio::test]
async fn check_refuses_an_unknown_endpoint() {
    let env = Env::start().await;
    create_bucket(&env.sh, "known-dst", true).await;
    let out = check_refuses(
        &env,
        &[Rule::new("unknown-ep-rule", "nowhere/some-src", "sh/known-dst")],
    )
    .await;
    assert_stderr_names(&out, "unknown-ep-rule");
    assert_stderr_names(&out, "nowhere");
}

#[tokio::test]
async fn check_refuses_an_invalid_rule_id() {
    let env = Env::start().await;
    create_bucket(&env.gz, "badid-src", true).await;
    create_bucket(&env.sh, "badid-dst", true).await;
    let out = check_refuses(&env, &[Rule::new("bad id!", "gz/badid-src", "sh/badid-dst")]).await;
    assert_stderr_names(&out, "bad id!");
}

#[tokio::test]
async fn check_refuses_a_bucket_reference_without_endpoint() {
    let env = Env::start().await;
    create_bucket(&env.gz, "noref-src", true).await;
    create_bucket(&env.sh, "noref-dst", true).await;
    let out = check_refuses(&env, &[Rule::new("noref-rule", "noref-src", "sh/noref-dst")]).await;
    assert_stderr_names(&out, "noref-src");
}

#[tokio::test]
async fn run_once_refuses_a_rule_that_fails_preflight() {
    let env = Env::start().await;
    create_bucket(&env.gz, "runpf-src", false).await;
    create_bucket(&env.sh, "runpf-dst", true).await;
    env.write_config(&[Rule::new("runpf-rule", "gz/runpf-src", "sh/runpf-dst")]);
    let out = env.crr(&["run", "--once"]).await;
    out.assert_code(2);
    assert_stderr_names(&out, "runpf-rule");
    assert_stderr_names(&out, "runpf-src");
}

// ---------------------------------------------------------------------------------------------
// where the config and the state come from
// ---------------------------------------------------------------------------------------------

fn dir_is_nonempty(path: &std::path::Path) -> bool {
    std::fs::read_dir(path).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// A replicating pair and a config text for it (not yet written anywhere).
async fn pair_env(rule_id: &str) -> (Env, String) {
    let env = Env::start().await;
    create_bucket(&env.gz, "where-src", true).await;
    create_bucket(&env.sh, "where-dst", true).await;
    let text = env.config_text(&[Rule::new(rule_id, "gz/where-src", "sh/where-dst")]);
    (env, text)
}

fn assert_status_has_enabled_rule(out: &CrrOutput, id: &str) {
    out.assert_ok();
    let rule = find_rule_status(&out.json(), id);
    assert!(
        rule["enable_point"].is_string(),
        "after a run the rule should have an enable point: {rule}"
    );
}

#[tokio::test]
async fn global_flags_are_accepted_after_the_subcommand() {
    let (env, text) = pair_env("flags-after").await;
    std::fs::write(env.path().join("c.toml"), &text).expect("write c.toml");

    let out = crr_raw(
        env.path(),
        &["run", "--once", "--config", "c.toml", "--state", "st"],
        &[],
    )
    .await;
    out.assert_ok();
    assert!(
        dir_is_nonempty(&env.path().join("st")),
        "the state dir given after the subcommand should be used\n{}",
        out.describe()
    );

    // The same state, read with the flags after and before the subcommand.
    let after = crr_raw(
        env.path(),
        &["status", "--json", "--config", "c.toml", "--state", "st"],
        &[],
    )
    .await;
    assert_status_has_enabled_rule(&after, "flags-after");
    let before = crr_raw(
        env.path(),
        &["--config", "c.toml", "--state", "st", "status", "--json"],
        &[],
    )
    .await;
    assert_status_has_enabled_rule(&before, "flags-after");
}

#[tokio::test]
async fn crr_config_and_crr_state_env_vars_are_used() {
    let (env, text) = pair_env("env-vars").await;
    let config = env.path().join("from-env.toml");
    let state = env.path().join("state-from-env");
    std::fs::write(&config, &text).expect("write config");
    let vars = [
        ("CRR_CONFIG", config.to_str().unwrap()),
        ("CRR_STATE", state.to_str().unwrap()),
    ];

    crr_raw(env.path(), &["check"], &vars).await.assert_ok();
    crr_raw(env.path(), &["run", "--once"], &vars).await.assert_ok();
    assert!(dir_is_nonempty(&state), "CRR_STATE should be the state dir");
    let status = crr_raw(env.path(), &["status", "--json"], &vars).await;
    assert_status_has_enabled_rule(&status, "env-vars");
}

#[tokio::test]
async fn flags_override_env_vars() {
    let (env, text) = pair_env("flag-wins").await;
    let config = env.path().join("real.toml");
    std::fs::write(&config, &text).expect("write config");
    let bogus = env.path().join("bogus.toml");
    std::fs::write(&bogus, "this is [ not toml").expect("write bogus config");
    let state = env.path().join("flag-state");
    let out = crr_raw(
        env.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "check",
        ],
        &[("CRR_CONFIG", bogus.to_str().unwrap())],
    )
    .await;
    out.assert_ok();
}

#[tokio::test]
async fn xdg_locations_are_the_defaults() {
    let (env, text) = pair_env("xdg-default").await;
    // crr_command points XDG_CONFIG_HOME / XDG_STATE_HOME into the test's temp dir.
    let config_dir = env.path().join("xdg-config").join("crr");
    std::fs::create_dir_all(&config_dir).expect("create xdg config dir");
    std::fs::write(config_dir.join("config.toml"), &text).expect("write config");

    crr_raw(env.path(), &["run", "--once"], &[]).await.assert_ok();
    assert!(
        dir_is_nonempty(&env.path().join("xdg-state").join("crr")),
        "the default state dir is $XDG_STATE_HOME/crr"
    );
    let status = crr_raw(env.path(), &["status", "--json"], &[]).await;
    assert_status_has_enabled_rule(&status, "xdg-default");
}
