//! `openapi.yaml` checked against the real app by schemathesis. It sends
//! every operation generated requests, valid and invalid, and fails on a
//! 5xx or on an answer the description does not allow: an undocumented
//! status, content type or header, a body that does not match its schema, a
//! method the route should refuse with 405, or a protected route answering
//! without its credentials.
//!
//! schemathesis is a Python tool: `scripts/schemathesis.sh` installs a
//! pinned version into `.tollgate/venv` on first use.

use std::process::{Output, Stdio};

use tollgate::admin::{
    root_keys::{self, Scope},
    Actor,
};

use crate::helpers::{providers, repo_root, spawn_app_with, TestApp, TestOptions, CRON_SECRET};

/// What schemathesis checks on every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,\
                      unsupported_method,allow_header_conformance,ignored_auth";

/// Test cases per operation and phase: enough to reach every status that
/// generated requests can reach, few enough that the five runs together
/// take about a minute on two cores.
const MAX_EXAMPLES: &str = "50";

/// A fixed seed, so that a failure reproduces.
const SEED: &str = "20261121";

/// One schemathesis run: the credentials it sends, the operations they
/// open, and its phases.
struct Run {
    name: &'static str,
    header: String,
    operations: [&'static str; 2],
    phases: &'static str,
}

/// Every phase, stateful included: it follows the links of
/// `openapi.yaml` (a created key to its reads, changes and revocation),
/// so only runs over linked operations take it.
const WITH_LINKS: &str = "examples,coverage,fuzzing,stateful";

/// The phases of a run over operations without links between them:
/// schemathesis counts a stateful phase with no link to follow as an error.
const WITHOUT_LINKS: &str = "examples,coverage,fuzzing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_openapi_yaml_describes() {
    let install = schemathesis(&["--version"]).await;
    assert!(
        install.status.success(),
        "scripts/schemathesis.sh could not install schemathesis:\n{}",
        report(&install)
    );
    let app = spawn_app_with(TestOptions {
        env: providers(true),
        ..TestOptions::default()
    })
    .await;
    let key = app.create_key().await;
    // Thousands of requests in a minute: the limiter must not be what answers.
    app.set_limits(&key, Some(100_000), None, None).await;

    let runs = [
        // Every route a secret key opens; the crons take the cron secret,
        // the management routes a root key.
        Run {
            name: "the secret key",
            header: format!("Authorization: Bearer {}", key.secret.expose()),
            operations: ["--exclude-path-regex", "^/api/(cron|keys)(/|$)"],
            phases: WITHOUT_LINKS,
        },
        // A root key with every scope, so that every operation gets past
        // its scope check to real answers: keys created, read, changed,
        // rotated and revoked, bans added, listed and lifted. One root key
        // each for keys and bans, so that neither run spends the other's
        // calls a minute.
        Run {
            name: "a root key, on keys",
            header: format!("Authorization: Bearer {}", root_key(&app).await),
            operations: ["--include-path", "/api/keys"],
            phases: WITH_LINKS,
        },
        Run {
            name: "a root key, on bans",
            header: format!("Authorization: Bearer {}", root_key(&app).await),
            operations: ["--include-path", "/api/keys/bans"],
            phases: WITH_LINKS,
        },
        Run {
            name: "a root key, on alert endpoints",
            header: format!("Authorization: Bearer {}", root_key(&app).await),
            operations: ["--include-path", "/api/keys/webhooks"],
            phases: WITHOUT_LINKS,
        },
        Run {
            name: "the cron secret",
            header: format!("Authorization: Bearer {CRON_SECRET}"),
            operations: ["--include-path-regex", "^/api/cron/"],
            phases: WITHOUT_LINKS,
        },
        // What a browser sends: the publishable key, in its own header.
        Run {
            name: "the publishable key",
            header: format!("X-API-Key: {}", key.publishable),
            operations: ["--include-path", "/api/collect"],
            phases: WITHOUT_LINKS,
        },
    ];
    let outputs = futures::future::join_all(runs.iter().map(|run| fuzz(&app, run))).await;

    let failures: Vec<String> = runs
        .iter()
        .zip(&outputs)
        .filter(|(_, output)| !output.status.success())
        .map(|(run, output)| format!("=== schemathesis with {} ===\n{}", run.name, report(output)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Shown with `--no-capture`: what was tested.
    for (run, output) in runs.iter().zip(&outputs) {
        eprintln!("=== schemathesis with {} ===\n{}", run.name, report(output));
    }
}

/// A root key with every scope, as `tollgate root-keys create` makes it.
async fn root_key(app: &TestApp) -> String {
    root_keys::create(&app.state.db, &Actor::Cli, "schemathesis", &Scope::ALL)
        .await
        .expect("creating a root key")
        .secret
        .expose()
        .to_owned()
}

/// Runs `schemathesis run` over `openapi.yaml` against the app.
async fn fuzz(app: &TestApp, run: &Run) -> Output {
    let spec = repo_root().join("openapi.yaml");
    #[rustfmt::skip]
    let args = [
        "run", spec.to_str().expect("a UTF-8 path"),
        "--url", &app.address,
        "--header", &run.header,
        run.operations[0], run.operations[1],
        "--checks", CHECKS,
        "--phases", run.phases,
        "--max-examples", MAX_EXAMPLES,
        "--seed", SEED,
        // One worker: CPython 3.11's `ast.parse`, which Hypothesis calls to
        // describe strategies, fails at random when threads call it at once.
        "--workers", "1",
        "--request-timeout", "10",
        "--generation-database", "none",
        "--no-color",
        "--output-truncate", "false",
    ];
    schemathesis(&args).await
}

/// Runs `scripts/schemathesis.sh` with `args`, in a directory of its own
/// under `.tollgate` (ignored by git), where it and Hypothesis keep caches.
async fn schemathesis(args: &[&str]) -> Output {
    let dir = repo_root().join(".tollgate/schemathesis");
    std::fs::create_dir_all(&dir).expect("creating .tollgate/schemathesis");
    tokio::process::Command::new(repo_root().join("scripts/schemathesis.sh"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running scripts/schemathesis.sh")
}

fn report(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
