//! Durability under `kill -9`, on SQLite and on PostgreSQL: the demo drives commands against
//! the simulator and prints each outcome as the resident is told it; the process is killed
//! without warning; every outcome that was told must be in the event log exactly once, and a
//! restarted runtime continues every gate's sequence without a gap or a duplicate.

use gatehouse_tests::{ScratchDatabase, pg_server};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatehouse_actors::store::EventStore;
use gatehouse_adapters::store::Store;

fn gatehouse_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/gatehouse");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as .ci/run does)",
        bin.display()
    );
    bin
}

/// The demo as a child process in `dir`, its stdout lines on a channel.
fn start_demo(dir: &Path, url: &str, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(gatehouse_bin())
        .arg("demo")
        .args(args)
        .current_dir(dir)
        .env("GATEHOUSE_DATABASE__URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gatehouse demo starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Waits for a child to exit; kills it and fails the test when it does not in time.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The command id of a line telling a resident a terminal outcome.
fn told(line: &str) -> Option<String> {
    if !line.contains(": told ") {
        return None;
    }
    let id = line.rsplit_once("[resident ")?.1.trim_end_matches(']');
    Some(id.to_string())
}

fn kill_dash_nine_loses_no_told_outcome(url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, lines) = start_demo(dir.path(), url, &["--no-chaos", "--rate", "40"]);

    // Collect outcomes for a while, then kill -9 with commands in flight.
    let mut outcomes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while outcomes.len() < 12 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200))
            && let Some(id) = told(&line)
        {
            outcomes.push(id);
        }
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        outcomes.len() >= 5,
        "only {} outcomes were told before the deadline",
        outcomes.len()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (finished, heads_before) = rt.block_on(async {
        let store = Store::connect(url)
            .await
            .expect("store opens after the crash");
        let finished = store.finished_commands(0).await.expect("finished commands");
        let heads = store.heads().await.expect("heads");
        store.close();
        (finished, heads)
    });
    let mut stored: HashMap<String, usize> = HashMap::new();
    for f in &finished {
        *stored.entry(f.id.to_string()).or_default() += 1;
    }
    for id in &outcomes {
        assert_eq!(
            stored.get(id).copied(),
            Some(1),
            "outcome of command {id} was told but is stored {} times",
            stored.get(id).copied().unwrap_or(0)
        );
    }

    // A restart continues every gate's sequence: gap-free and without duplicates.
    let (mut again, lines) = start_demo(
        dir.path(),
        url,
        &["--no-chaos", "--rate", "0", "--for", "4"],
    );
    let status = wait_bounded(&mut again, Duration::from_secs(120));
    assert!(status.success(), "the restarted demo failed: {status:?}");
    let saw_history = lines
        .try_iter()
        .any(|l| l.contains("history of") && l.contains("kept from earlier runs"));
    assert!(saw_history, "the restarted demo found its history");
    rt.block_on(async {
        let store = Store::connect(url).await.expect("store");
        let before: HashMap<_, _> = heads_before.into_iter().collect();
        for (gate, head) in store.heads().await.expect("heads") {
            let events = store.since(gate.clone(), 0, 100_000).await.expect("since");
            let seqs: Vec<u64> = events.iter().map(|e| e.event.seq).collect();
            let expected: Vec<u64> = (1..=head.seq).collect();
            assert_eq!(seqs, expected, "{gate}: sequence has a gap or a duplicate");
            let old = before.get(&gate).map_or(0, |h| h.seq);
            assert!(
                head.seq > old,
                "{gate}: no new events after the restart ({old} -> {})",
                head.seq
            );
        }
        store.close();
    });
}

#[test]
fn kill_dash_nine_on_sqlite_loses_no_told_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/gatehouse.db", dir.path().display());
    kill_dash_nine_loses_no_told_outcome(&url);
}

#[test]
fn kill_dash_nine_on_postgresql_loses_no_told_outcome() {
    let db =
        ScratchDatabase::create(&pg_server(), "gh_test_durability").expect("a scratch database");
    kill_dash_nine_loses_no_told_outcome(&db.url());
}
