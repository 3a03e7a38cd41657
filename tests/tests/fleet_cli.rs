//! `gatehouse migrate`, `gatehouse fleet import` and `gatehouse fleet export` run as processes
//! (the built `target/debug/gatehouse`), each test against a database of its own: a SQLite file
//! in a temporary directory, or a fresh PostgreSQL database on the shared server that is
//! dropped afterwards. Migrations apply once; an import is idempotent and round-trips through
//! export; without `--prune` it keeps what the file leaves out and with it removes that; a
//! file that is bad on its own, or that would leave the store inconsistent, is refused whole
//! with the offending key named, and the store's export is byte-identical afterwards.

use gatehouse_tests::{ScratchDatabase, pg_server};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gatehouse_adapters::profile::ProfileSet;
use gatehouse_runtime::fleet_file::FleetFile;

/// The longest one command may run before the test gives up on it.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

fn gatehouse_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/gatehouse");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as .ci/run does)",
        bin.display()
    );
    bin
}

/// A child process killed if the test lets go of it before it exited.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What one run of the binary did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// The binary pointed at one database, run from a temporary directory of its own.
struct Gatehouse {
    dir: tempfile::TempDir,
    url: String,
    runs: AtomicUsize,
    /// Dropped after `dir`: the database outlives nothing that uses it.
    _database: Option<ScratchDatabase>,
}

impl Gatehouse {
    fn on_sqlite() -> Gatehouse {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/gatehouse.db", dir.path().display());
        Gatehouse {
            dir,
            url,
            runs: AtomicUsize::new(0),
            _database: None,
        }
    }

    fn on_postgresql() -> Gatehouse {
        let database =
            ScratchDatabase::create(&pg_server(), "gh_test_fleet_cli").expect("a scratch database");
        Gatehouse {
            dir: tempfile::tempdir().expect("tempdir"),
            url: database.url(),
            runs: AtomicUsize::new(0),
            _database: Some(database),
        }
    }

    /// Writes a fleet file into the working directory and returns its path.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("the fleet file is written");
        path
    }

    /// Runs `gatehouse ARGS` to completion (bounded), with only this test's database set.
    fn run(&self, args: &[&str]) -> Run {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.path().join(format!("run-{n}.stdout"));
        let err_path = self.dir.path().join(format!("run-{n}.stderr"));
        let mut cmd = Command::new(gatehouse_bin());
        cmd.args(args).current_dir(self.dir.path());
        for (key, _) in std::env::vars_os() {
            let inherited = key.to_string_lossy();
            if inherited.starts_with("GATEHOUSE_")
                || inherited == "DATABASE_URL"
                || inherited == "RUST_LOG"
            {
                cmd.env_remove(&key);
            }
        }
        let mut child = Running(
            cmd.env("GATEHOUSE_DATABASE__URL", &self.url)
                .env("GATEHOUSE_LOG__LEVEL", "warn")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out_path).expect("stdout file"))
                .stderr(std::fs::File::create(&err_path).expect("stderr file"))
                .spawn()
                .expect("gatehouse starts"),
        );
        let deadline = Instant::now() + COMMAND_LIMIT;
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("waiting for gatehouse") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "`gatehouse {}` did not exit within {COMMAND_LIMIT:?}",
                args.join(" ")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            status,
            stdout: std::fs::read_to_string(&out_path).expect("stdout read back"),
            stderr: std::fs::read_to_string(&err_path).expect("stderr read back"),
        }
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(
            run.status.success(),
            "`gatehouse {}` failed ({}):\n{}",
            args.join(" "),
            run.status,
            run.stderr
        );
        run.stdout
    }

    /// Runs and requires failure; returns stderr.
    fn refused(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(
            !run.status.success(),
            "`gatehouse {}` succeeded but should have failed:\n{}",
            args.join(" "),
            run.stdout
        );
        run.stderr
    }

    fn import(&self, file: &Path, prune: bool) -> String {
        let path = file.to_str().expect("a UTF-8 path");
        let mut args = vec!["fleet", "import", path];
        if prune {
            args.push("--prune");
        }
        self.ok(&args).trim().to_string()
    }

    fn export(&self) -> String {
        self.ok(&["fleet", "export"])
    }
}

fn site(id: &str, name: &str) -> String {
    format!("[[site]]\nid = \"{id}\"\nname = \"{name}\"\ntimezone = \"Europe/Paris\"\n\n")
}

fn controller(id: &str, profile: &str, port: u16) -> String {
    format!(
        "[[controller]]\nid = \"{id}\"\nsite = \"hq\"\nprofile = \"{profile}\"\n\
         endpoint = \"127.0.0.1:{port}\"\npoll_interval_ms = 500\n\n"
    )
}

fn gate(id: &str, controller: &str, unit: u8, name: &str) -> String {
    format!(
        "[[gate]]\nid = \"{id}\"\ncontroller = \"{controller}\"\nunit = {unit}\n\
         name = \"{name}\"\ntravel_timeout_s = 30\n\n"
    )
}

/// The fleet every test starts from: `north` with g1 (unit 1) and g2 (unit 2), `south` with
/// g3 (unit 1), all on site `hq`.
fn base_fleet() -> String {
    [
        site("hq", "Headquarters"),
        controller("north", "generic", 1502),
        controller("south", "came-zlb30", 1503),
        gate("g1", "north", 1, "North one"),
        gate("g2", "north", 2, "North two"),
        gate("g3", "south", 1, "South one"),
    ]
    .concat()
}

/// An export read back: controller ids, and each gate as (id, controller, unit, name).
type Parsed = (Vec<String>, Vec<(String, String, u8, String)>);

fn parse_export(export: &str) -> Parsed {
    let profiles = ProfileSet::builtin().expect("the built-in profiles load");
    let file = FleetFile::parse("export", export, &profiles)
        .unwrap_or_else(|e| panic!("the export is not a valid fleet file: {e}\n{export}"));
    let controllers = file.controllers.iter().map(|c| c.id.to_string()).collect();
    let gates = file
        .gates
        .iter()
        .map(|g| {
            (
                g.id.to_string(),
                g.controller.to_string(),
                g.unit,
                g.name.clone(),
            )
        })
        .collect();
    (controllers, gates)
}

fn gate_ids(export: &str) -> Vec<String> {
    let mut ids: Vec<String> = parse_export(export).1.into_iter().map(|g| g.0).collect();
    ids.sort();
    ids
}

fn controller_ids(export: &str) -> Vec<String> {
    let mut ids = parse_export(export).0;
    ids.sort();
    ids
}

/// How many migrations ship for a backend (one directory each).
fn shipped_migrations(backend: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(backend);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().join("up.sql").exists())
        .count()
}

fn migrate_applies_every_migration_once(gh: &Gatehouse, backend: &str) {
    let shipped = shipped_migrations(backend);
    assert!(shipped > 0, "no {backend} migrations found");
    assert_eq!(
        gh.ok(&["migrate"]).trim(),
        format!("{shipped} migration(s) applied"),
        "a fresh database gets every {backend} migration"
    );
    assert_eq!(
        gh.ok(&["migrate"]).trim(),
        "0 migration(s) applied",
        "a current schema gets none"
    );
}

#[test]
fn migrate_applies_every_migration_the_first_time_and_none_the_second_on_sqlite() {
    migrate_applies_every_migration_once(&Gatehouse::on_sqlite(), "sqlite");
}

#[test]
fn migrate_applies_every_migration_the_first_time_and_none_the_second_on_postgresql() {
    migrate_applies_every_migration_once(&Gatehouse::on_postgresql(), "postgres");
}

fn importing_twice_gives_the_same_export(gh: &Gatehouse) {
    let file = gh.file("fleet.toml", &base_fleet());
    assert_eq!(
        gh.import(&file, false),
        "imported 1 sites, 2 controllers, 3 gates; 0 removed"
    );
    let first = gh.export();
    assert_eq!(gate_ids(&first), ["g1", "g2", "g3"]);
    assert_eq!(controller_ids(&first), ["north", "south"]);

    assert_eq!(
        gh.import(&file, false),
        "imported 1 sites, 2 controllers, 3 gates; 0 removed"
    );
    assert_eq!(
        gh.export(),
        first,
        "a second import of the same file changed the store"
    );
}

#[test]
fn importing_the_same_file_twice_gives_the_same_export_on_sqlite() {
    importing_twice_gives_the_same_export(&Gatehouse::on_sqlite());
}

#[test]
fn importing_the_same_file_twice_gives_the_same_export_on_postgresql() {
    importing_twice_gives_the_same_export(&Gatehouse::on_postgresql());
}

#[test]
fn an_export_imports_back_to_the_same_export_in_the_same_and_in_a_fresh_store() {
    let source = Gatehouse::on_sqlite();
    let optional = "[[gate]]\nid = \"g4\"\ncontroller = \"north\"\nunit = 4\n\
                    travel_timeout_s = 45\nauto_close_after_s = 120\nleft_open_alert_after_s = 900\n";
    let file = source.file("fleet.toml", &(base_fleet() + optional));
    source.import(&file, false);
    let exported = source.export();
    assert!(
        exported.contains("auto_close_after_s = 120") && exported.contains("Europe/Paris"),
        "the export carries every setting:\n{exported}"
    );

    let again = source.file("exported.toml", &exported);
    source.import(&again, false);
    assert_eq!(
        source.export(),
        exported,
        "same store: export, import, export"
    );

    let fresh = Gatehouse::on_sqlite();
    let copied = fresh.file("exported.toml", &exported);
    fresh.import(&copied, true);
    assert_eq!(
        fresh.export(),
        exported,
        "fresh store: export, import, export"
    );
}

/// `hq` with `north` holding only g1, renamed: g2, g3 and `south` are left out.
fn north_only() -> String {
    [
        site("hq", "Headquarters"),
        controller("north", "generic", 1502),
        gate("g1", "north", 1, "Main gate"),
    ]
    .concat()
}

#[test]
fn an_import_without_prune_keeps_the_gates_and_controllers_the_file_leaves_out() {
    let gh = Gatehouse::on_sqlite();
    gh.import(&gh.file("fleet.toml", &base_fleet()), false);

    assert_eq!(
        gh.import(&gh.file("north-only.toml", &north_only()), false),
        "imported 1 sites, 1 controllers, 1 gates; 0 removed"
    );
    let export = gh.export();
    assert_eq!(gate_ids(&export), ["g1", "g2", "g3"]);
    assert_eq!(controller_ids(&export), ["north", "south"]);
    let (_, gates) = parse_export(&export);
    assert!(
        gates.contains(&("g1".into(), "north".into(), 1, "Main gate".into())),
        "what the file does name is updated: {gates:?}"
    );
}

#[test]
fn an_import_with_prune_removes_the_gates_and_controllers_the_file_leaves_out() {
    let gh = Gatehouse::on_sqlite();
    gh.import(&gh.file("fleet.toml", &base_fleet()), false);

    // g2 and g3 go, and `south`, left without gates and out of the file, goes with them.
    assert_eq!(
        gh.import(&gh.file("north-only.toml", &north_only()), true),
        "imported 1 sites, 1 controllers, 1 gates; 3 removed"
    );
    let export = gh.export();
    assert_eq!(gate_ids(&export), ["g1"]);
    assert_eq!(controller_ids(&export), ["north"]);
    let (_, gates) = parse_export(&export);
    assert_eq!(
        gates,
        [("g1".into(), "north".into(), 1, "Main gate".into())]
    );

    // Pruning to the same file again removes nothing more.
    assert_eq!(
        gh.import(&gh.file("north-only.toml", &north_only()), true),
        "imported 1 sites, 1 controllers, 1 gates; 0 removed"
    );
    assert_eq!(gh.export(), export);
}

#[test]
fn a_bad_fleet_file_is_refused_naming_the_key_and_leaves_the_store_as_it_was() {
    let gh = Gatehouse::on_sqlite();
    gh.import(&gh.file("fleet.toml", &base_fleet()), false);
    let before = gh.export();

    // Each file also renames g1, so that a partial application would show in the export.
    let cases = [
        (
            // REST refuses this zone too: both run the one fleet validator.
            "unknown-timezone.toml",
            [
                site("hq", "Headquarters").replace("Europe/Paris", "Mars/Olympus"),
                controller("north", "generic", 1502),
                gate("g1", "north", 1, "Renamed"),
            ]
            .concat(),
            "site[0].timezone",
        ),
        (
            "duplicate-unit.toml",
            [
                site("hq", "Headquarters"),
                controller("north", "generic", 1502),
                gate("g1", "north", 1, "Renamed"),
                gate("g4", "north", 1, "Same unit"),
            ]
            .concat(),
            "gate[1].unit",
        ),
        (
            "unknown-profile.toml",
            [
                site("hq", "Headquarters"),
                controller("north", "generic", 1502),
                controller("east", "no-such-profile", 1504),
                gate("g1", "north", 1, "Renamed"),
            ]
            .concat(),
            "controller[1].profile",
        ),
        (
            "missing-controller.toml",
            [
                site("hq", "Headquarters"),
                controller("north", "generic", 1502),
                gate("g1", "north", 1, "Renamed"),
                gate("g5", "west", 1, "Nowhere"),
            ]
            .concat(),
            "gate[1].controller",
        ),
    ];
    for (name, text, key) in cases {
        let path = gh.file(name, &text);
        for prune in [false, true] {
            let mut args = vec!["fleet", "import", path.to_str().expect("a UTF-8 path")];
            if prune {
                args.push("--prune");
            }
            let stderr = gh.refused(&args);
            assert!(
                stderr.contains(key) && stderr.contains(name),
                "{name} (prune: {prune}): the error names the file and {key}: {stderr}"
            );
            assert_eq!(
                gh.export(),
                before,
                "{name} (prune: {prune}) changed the store"
            );
        }
    }
}

#[test]
fn an_import_valid_alone_but_clashing_with_the_store_is_refused_whole() {
    let gh = Gatehouse::on_sqlite();
    gh.import(&gh.file("fleet.toml", &base_fleet()), false);
    let before = gh.export();

    // Valid as a file; but the store keeps g1 on north's unit 1 (no --prune), so g4 would
    // share it. The site and g2 are renamed too: none of it may stick.
    let clash = [
        site("hq", "Renamed headquarters"),
        controller("north", "generic", 1502),
        gate("g2", "north", 2, "Renamed"),
        gate("g4", "north", 1, "Newcomer"),
    ]
    .concat();
    let path = gh.file("clash.toml", &clash);
    assert!(
        gh.ok(&["check-fleet", path.to_str().expect("a UTF-8 path")])
            .starts_with("ok"),
        "the file on its own is valid"
    );
    let stderr = gh.refused(&["fleet", "import", path.to_str().expect("a UTF-8 path")]);
    assert!(
        stderr.contains("unit 1 on north"),
        "the error says what would clash: {stderr}"
    );
    assert_eq!(
        gh.export(),
        before,
        "nothing of the refused import was applied"
    );
}

#[test]
fn a_pruned_import_may_give_a_removed_gates_unit_to_a_new_gate() {
    let gh = Gatehouse::on_sqlite();
    gh.import(&gh.file("fleet.toml", &base_fleet()), false);

    // g1 is replaced by g4 on the same unit: valid as a file and as a result.
    let replaced = base_fleet().replace("id = \"g1\"", "id = \"g4\"");
    let run = gh.run(&[
        "fleet",
        "import",
        "--prune",
        gh.file("replaced.toml", &replaced)
            .to_str()
            .expect("a UTF-8 path"),
    ]);
    assert!(run.status.success(), "refused: {}", run.stderr);
    let (_, gates) = parse_export(&gh.export());
    assert!(
        gates.contains(&("g4".into(), "north".into(), 1, "North one".into())),
        "{gates:?}"
    );
    assert!(!gates.iter().any(|g| g.0 == "g1"), "{gates:?}");
}

#[test]
#[ignore = "known limitation: UNIQUE (controller, unit) is checked per statement, so swapping two gates' \
            units is refused by the database; swap through a free unit, in two imports"]
fn an_import_may_swap_the_units_of_two_gates() {
    let gh = Gatehouse::on_sqlite();
    gh.import(&gh.file("fleet.toml", &base_fleet()), false);

    let swapped = [
        site("hq", "Headquarters"),
        controller("north", "generic", 1502),
        controller("south", "came-zlb30", 1503),
        gate("g1", "north", 2, "North one"),
        gate("g2", "north", 1, "North two"),
        gate("g3", "south", 1, "South one"),
    ]
    .concat();
    let run = gh.run(&[
        "fleet",
        "import",
        gh.file("swapped.toml", &swapped)
            .to_str()
            .expect("a UTF-8 path"),
    ]);
    assert!(run.status.success(), "refused: {}", run.stderr);
    let (_, gates) = parse_export(&gh.export());
    assert!(
        gates.contains(&("g1".into(), "north".into(), 2, "North one".into()))
            && gates.contains(&("g2".into(), "north".into(), 1, "North two".into())),
        "{gates:?}"
    );
}
