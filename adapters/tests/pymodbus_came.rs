//! The Modbus TCP link against peers we did not write: a CAME-style board served by
//! pymodbus (`tests/peers/came_pymodbus.py`), and two broken endpoints (one silent, one
//! answering garbage). The pymodbus peer is required: if python3 or pymodbus is missing the
//! test fails and says what to install, because a skipped peer test proves nothing.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_actors::gate::{HwOp, HwState, Observation, RawCounter};
use gatehouse_actors::ports::{LinkConnector, LinkError, LinkSession, UnitException, WriteRefused};
use gatehouse_adapters::modbus::{LinkTiming, ModbusConnector, TimingOverrides, UnitProfile, Wire};
use gatehouse_adapters::profile::ProfileSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const INSTALL_HINT: &str = "run `pip install pymodbus==3.16.1` (python3 and pymodbus 3.16.1 are required; CI installs them)";
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Long enough that the read right after a command reliably sees the motion state even on
/// a loaded 2-core machine, short enough to keep the test quick.
const TRAVEL_MS: u64 = 600;
/// The counter starts one below a carry into the high word, so the first completed open
/// proves the word order against somebody else's encoding.
const COUNTER_START: u32 = 0x0001_FFFF;

/// The python peer; killed when dropped, so a failing assertion does not leak it.
struct Peer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    async fn start(port: u16, units: &str) -> Peer {
        check_pymodbus();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/peers/came_pymodbus.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--units", units])
            .args(["--travel-ms", &TRAVEL_MS.to_string()])
            .args(["--counter-start", &COUNTER_START.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 ({e}); {INSTALL_HINT}"));

        // Pipes are drained by threads: the peer must never block on a full pipe, and
        // stderr is kept for the failure message.
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let mut peer = Peer {
            child,
            lines,
            stderr,
        };
        let first = peer.next_line_within(READY_WITHIN).await;
        assert_eq!(first, "READY", "the peer did not get ready");
        peer
    }

    async fn next_line_within(&mut self, limit: Duration) -> String {
        match tokio::time::timeout(limit, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = self.child.wait().ok();
                // Give the stderr thread a moment to collect the peer's last words.
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "the peer exited ({status:?}); {INSTALL_HINT}\nstderr:\n{}",
                    self.stderr.lock().unwrap()
                )
            }
            Err(_) => panic!(
                "no line from the peer within {limit:?}\nstderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    async fn next_line(&mut self) -> String {
        self.next_line_within(Duration::from_secs(5)).await
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails (never skips) with the install hint when the peer cannot run here.
fn check_pymodbus() {
    let out = Command::new("python3")
        .args(["-c", "import pymodbus; print(pymodbus.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("python3 is not available ({e}); {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "pymodbus cannot be imported; {INSTALL_HINT}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if version != "3.16.1" {
        eprintln!("warning: pymodbus {version} found, the peer is written for 3.16.1");
    }
}

fn free_port() -> u16 {
    // The OS picks a free port; it is released right away for the peer to bind. Another
    // process could grab it in between, which is rare enough on loopback for a test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls gate `gate` until `done` holds, for at most `limit`.
async fn read_until(
    link: &mut Box<dyn LinkSession>,
    gate: usize,
    limit: Duration,
    done: impl Fn(&Observation) -> bool,
) -> Observation {
    let started = Instant::now();
    loop {
        let obs = link.read(gate).await.unwrap().unwrap();
        if done(&obs) {
            return obs;
        }
        assert!(
            started.elapsed() < limit,
            "gate {gate} still {obs:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counter(value: u32) -> Option<RawCounter> {
    Some(RawCounter { value, bits: 32 })
}

#[tokio::test]
async fn came_board_served_by_pymodbus() {
    let port = free_port();
    let mut peer = Peer::start(port, "1,2").await;

    let came = ProfileSet::builtin()
        .unwrap()
        .get("came-zlb30")
        .unwrap()
        .clone();
    let gates = vec![
        UnitProfile {
            unit: 1,
            profile: came.clone(),
        },
        UnitProfile {
            unit: 2,
            profile: came.clone(),
        },
        // Not served by the peer: a unit that does not exist behind this endpoint.
        UnitProfile {
            unit: 9,
            profile: came,
        },
    ];
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let connector = ModbusConnector::from_profiles(
        Wire::Tcp(addr.to_string()),
        gates,
        TimingOverrides::default(),
    );
    let mut link = connector.connect().await.unwrap();
    let travel = Duration::from_millis(TRAVEL_MS * 5);

    let obs = link.read(0).await.unwrap().unwrap();
    assert_eq!(obs.state, HwState::Closed);
    assert_eq!(obs.position, Some(0));
    assert!(!obs.obstructed);
    assert_eq!(obs.fault_code, None);
    assert_eq!(obs.cycles, counter(COUNTER_START));

    // Open unit 1.
    let done = link.write(0, HwOp::Open).await.unwrap().unwrap();
    assert_eq!(done.release_after, None);
    assert_eq!(peer.next_line().await, "WRITE unit=1 register=200 value=1");
    assert_eq!(link.read(0).await.unwrap().unwrap().state, HwState::Opening);
    let obs = read_until(&mut link, 0, travel, |o| o.state != HwState::Opening).await;
    assert_eq!(obs.state, HwState::Open);
    assert_eq!(obs.position, Some(100));
    assert_eq!(obs.cycles, counter(COUNTER_START + 1));

    // Unit 2 did not move.
    let other = link.read(1).await.unwrap().unwrap();
    assert_eq!(other.state, HwState::Closed);
    assert_eq!(other.position, Some(0));
    assert_eq!(other.cycles, counter(COUNTER_START));

    // Close unit 1: closing does not count a cycle.
    link.write(0, HwOp::Close).await.unwrap().unwrap();
    assert_eq!(peer.next_line().await, "WRITE unit=1 register=200 value=2");
    assert_eq!(link.read(0).await.unwrap().unwrap().state, HwState::Closing);
    let obs = read_until(&mut link, 0, travel, |o| o.state != HwState::Closing).await;
    assert_eq!(obs.state, HwState::Closed);
    assert_eq!(obs.position, Some(0));
    assert_eq!(obs.cycles, counter(COUNTER_START + 1));

    // Stop unit 2 part way: CAME's 19 decodes to stopped, and no cycle is counted.
    link.write(1, HwOp::Open).await.unwrap().unwrap();
    assert_eq!(peer.next_line().await, "WRITE unit=2 register=200 value=1");
    link.write(1, HwOp::Stop).await.unwrap().unwrap();
    assert_eq!(peer.next_line().await, "WRITE unit=2 register=200 value=3");
    let obs = link.read(1).await.unwrap().unwrap();
    assert_eq!(obs.state, HwState::Stopped);
    tokio::time::sleep(Duration::from_millis(TRAVEL_MS + 100)).await;
    let obs = link.read(1).await.unwrap().unwrap();
    assert_eq!(
        obs.state,
        HwState::Stopped,
        "a stopped gate must not arrive"
    );
    assert_eq!(obs.cycles, counter(COUNTER_START));

    // The warning output is its own register.
    link.write(0, HwOp::Warn).await.unwrap().unwrap();
    assert_eq!(peer.next_line().await, "WRITE unit=1 register=201 value=1");

    // An absent unit is that gate's exception; the session keeps serving the others.
    let absent = link.read(2).await.unwrap();
    assert!(
        matches!(absent, Err(UnitException(_))),
        "expected an exception, got {absent:?}"
    );
    let absent = link.write(2, HwOp::Open).await.unwrap();
    assert!(
        matches!(absent, Err(WriteRefused::Exception(UnitException(_)))),
        "expected an exception, got {absent:?}"
    );
    let obs = link.read(0).await.unwrap().unwrap();
    assert_eq!(obs.state, HwState::Closed);

    // No write was reported that the test did not make.
    assert!(
        peer.lines.try_recv().is_err(),
        "the peer reported an unexpected write"
    );
}

fn came_gate() -> Vec<UnitProfile> {
    let came = ProfileSet::builtin()
        .unwrap()
        .get("came-zlb30")
        .unwrap()
        .clone();
    vec![UnitProfile {
        unit: 1,
        profile: came,
    }]
}

fn timing(request: Duration) -> LinkTiming {
    LinkTiming {
        connect_timeout: Duration::from_secs(2),
        request_timeout: request,
        inter_frame_delay: Duration::ZERO,
        timeouts_before_down: 3,
    }
}

#[tokio::test]
async fn a_silent_controller_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, reads whatever comes, never answers; holds the socket open meanwhile.
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut sink = [0u8; 256];
        while let Ok(n) = socket.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    });

    let limit = Duration::from_millis(300);
    let connector = ModbusConnector::tcp(addr, came_gate(), timing(limit));
    let mut link = connector.connect().await.unwrap();
    let started = Instant::now();
    let outcome = link.read(0).await;
    let took = started.elapsed();
    assert_eq!(outcome, Err(LinkError::Timeout(limit)));
    // Asked three times (a lost reply is asked again), then declared down.
    assert!(took >= limit * 3 && took < limit * 8, "took {took:?}");
    // Used again anyway, the session answers with an error rather than panicking.
    assert!(link.write(0, HwOp::Open).await.is_err());
}

/// Serves one connection: reads one request, answers `reply`, then closes.
async fn answer_once(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut request = [0u8; 256];
        if socket.read(&mut request).await.is_err() {
            return;
        }
        let _ = socket.write_all(reply).await;
        let _ = socket.shutdown().await;
    });
    addr
}

#[tokio::test]
async fn garbage_is_an_error_not_a_panic_or_a_hang() {
    let cases: [&'static [u8]; 3] = [
        // An MBAP header with a foreign protocol id.
        &[0x00, 0x00, 0x12, 0x34, 0x00, 0x03, 0x01, 0x03, 0x00],
        // Someone else's protocol on the port, then the connection closes.
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        // A frame whose PDU is cut short of its own byte count.
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x01, 0x03, 0x0C, 0x00],
    ];
    let limit = Duration::from_secs(3);
    for reply in cases {
        let addr = answer_once(reply).await;
        let connector = ModbusConnector::tcp(addr, came_gate(), timing(limit));
        let mut link = connector.connect().await.unwrap();
        let started = Instant::now();
        let outcome = link.read(0).await;
        assert!(
            matches!(outcome, Err(LinkError::Protocol(_)) | Err(LinkError::Io(_))),
            "reply {reply:?}: got {outcome:?}"
        );
        assert!(
            started.elapsed() < limit / 2,
            "reply {reply:?}: took {:?}",
            started.elapsed()
        );
    }
}
