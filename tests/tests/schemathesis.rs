//! The served OpenAPI document against the running API, by schemathesis (a property-based
//! tester that generates requests from the document): no answer may be a server error, have a
//! status, content type or body the document does not describe. Against `gatehouse demo`, as
//! its admin, for a bounded time; CI installs the pinned schemathesis in its venv.

use std::process::Command;
use std::time::Duration;

use gatehouse_tests::http::Http;
use gatehouse_tests::procs::{Proc, Stream, bin};

/// The generation budget, and the bound on the whole run around it.
const BUDGET_S: u64 = 45;
const RUN_LIMIT: Duration = Duration::from_secs(BUDGET_S + 120);

fn schemathesis_present() -> bool {
    Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_the_document_does_not_describe() {
    if !schemathesis_present() {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is required under CI (.ci/run installs it in its venv)"
        );
        eprintln!("skipping: schemathesis is not installed (.ci/run installs it)");
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(
        dir.path().join("c.toml"),
        // A public URL, as a real deployment has one: emailed links can be made (without it,
        // asking for one answers 503, which schemathesis counts as a server error).
        "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://gatehouse.invalid\"\n",
    )
    .expect("config");
    let mut demo = Proc::spawn(
        "gatehouse demo",
        Command::new(bin("gatehouse"))
            .args([
                "demo",
                "--no-chaos",
                "--rate",
                "0",
                "--for",
                "400",
                "--config",
                "c.toml",
            ])
            .current_dir(dir.path()),
    );
    let line = demo.wait_for(Stream::Out, "API:", 1);
    let url = line.split_whitespace().nth(1).expect("a URL").to_string();
    let base = url.trim_end_matches("/api/v1").to_string();
    let password = demo
        .wait_for(Stream::Out, "password:", 1)
        .split_whitespace()
        .nth(1)
        .expect("the password")
        .to_string();
    demo.wait_for(Stream::Out, "offline -> closed", 12);
    let addr = base
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let login = Http::new(addr, Duration::from_secs(30))
        .login("demo", &password)
        .await;
    assert_eq!(login.status, 200, "{login:?}");
    let token = login.body["access_token"].as_str().expect("a token");

    let mut run = Proc::spawn(
        "schemathesis",
        Command::new("schemathesis")
            .arg("run")
            .arg(format!("{base}/api/v1/openapi.json"))
            .arg("--header")
            .arg(format!("Authorization: Bearer {token}"))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--workers",
                "2",
                "--seed",
                "20261130",
                "--max-time",
                &BUDGET_S.to_string(),
            ])
            .env("NO_COLOR", "1")
            .current_dir(dir.path()),
    );
    let status = run.finish(RUN_LIMIT);
    let out = run.lines(Stream::Out).join("\n");
    println!("{out}");
    assert!(
        status.success(),
        "schemathesis found answers the document does not describe:\n{out}"
    );
    assert!(out.contains("passed"), "{out}");
    demo.signal("TERM");
    let _ = demo.try_wait_exit(Duration::from_secs(30));
}
