//! The control port: a line protocol over TCP so that a test or benchmark in another process
//! can inject faults into a running `gatehouse-sim` and look at its gates.
//!
//! One command per line, words separated by spaces; durations in milliseconds. Every command
//! ends with a line `ok` or `error: <why>`; `status` and `list` print their lines before `ok`.
//!
//! ```text
//! list                              one line per controller: name address profile units
//! status NAME                       one line per gate, then the faults in force
//! writes NAME [N]                   the last N writes (default 20), each with the connection
//!                                   it came on (`from=ADDR:PORT`, `-` on a serial line)
//! drop NAME                         close every connection
//! restart NAME MS                   refuse connections for MS, coils off, gates stop
//! stall NAME MS                     no replies for MS
//! dropwrites NAME MS                writes swallowed (not done, not answered) for MS
//! slow NAME DELAY_MS MS             replies late by DELAY_MS, for MS
//! exception NAME UNIT CODE MS       UNIT answers exception CODE, for MS
//! garbage NAME MS                   noise instead of responses, for MS
//! obstruct NAME UNIT on|off         photo-eye of UNIT blocked or clear
//! press NAME UNIT                   the local button of UNIT (open / stop / close)
//! fault NAME UNIT CODE              motor fault CODE on UNIT until reset
//! clear NAME                        end every injected fault
//! help                              this list
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::controller::{Fault, SimController, WriteKind};
use crate::scenario::{MAX_DELAY, MAX_FAULT_DURATION};

/// Longest command line accepted; a longer one closes the connection.
pub const MAX_LINE: usize = 1024;

/// Control connections served at once; more are turned away.
pub const MAX_CONNECTIONS: usize = 32;

/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Default and largest number of writes `writes` shows.
const DEFAULT_WRITES_SHOWN: usize = 20;
const MAX_WRITES_SHOWN: usize = 1000;

const HELP: &str = "\
list
status NAME
writes NAME [N]
drop NAME
restart NAME MS
stall NAME MS
dropwrites NAME MS
slow NAME DELAY_MS MS
exception NAME UNIT CODE MS
garbage NAME MS
obstruct NAME UNIT on|off
press NAME UNIT
fault NAME UNIT CODE
clear NAME
help";

/// Serves the control protocol on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, controllers: Vec<SimController>) {
    let controllers = Arc::new(controllers);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("control port: accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            let _ = stream
                .write_all(b"error: too many control connections\n")
                .await;
            continue;
        };
        let controllers = Arc::clone(&controllers);
        tokio::spawn(async move {
            debug!(%peer, "control connection");
            if let Err(e) = session(stream, &controllers).await {
                debug!(%peer, "control connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn session(stream: TcpStream, controllers: &[SimController]) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(128);
    loop {
        line.clear();
        let limit = (MAX_LINE + 1) as u64;
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
            write
                .write_all(format!("error: line longer than {MAX_LINE} bytes\n").as_bytes())
                .await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let reply = execute(text.trim(), controllers).await;
        write.write_all(reply.as_bytes()).await?;
    }
}

/// Runs one command line and returns the full reply, ending in `ok\n` or `error: ...\n`.
/// An empty line gets an empty reply.
pub async fn execute(line: &str, controllers: &[SimController]) -> String {
    if line.is_empty() {
        return String::new();
    }
    match run(line, controllers).await {
        Ok(mut out) => {
            out.push_str("ok\n");
            out
        }
        Err(e) => format!("error: {e}\n"),
    }
}

async fn run(line: &str, controllers: &[SimController]) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (&verb, args) = words.split_first().ok_or("empty command")?;
    let arity = |n: usize, usage: &str| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("usage: {usage}"))
        }
    };
    let find = |name: &str| {
        controllers
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| format!("no controller {name:?}"))
    };
    let fault = match verb {
        "help" => return Ok(format!("{HELP}\n")),
        "list" => {
            arity(0, "list")?;
            let mut out = String::new();
            for c in controllers {
                let _ = writeln!(out, "{}", describe(c));
            }
            return Ok(out);
        }
        "status" => {
            arity(1, "status NAME")?;
            return Ok(status(find(args[0])?));
        }
        "writes" => {
            if !(1..=2).contains(&args.len()) {
                return Err("usage: writes NAME [N]".into());
            }
            let n = match args.get(1) {
                Some(s) => number(s, "N", 1, MAX_WRITES_SHOWN as u64)? as usize,
                None => DEFAULT_WRITES_SHOWN,
            };
            return Ok(writes(find(args[0])?, n));
        }
        "clear" => {
            arity(1, "clear NAME")?;
            find(args[0])?.clear();
            return Ok(String::new());
        }
        "drop" => {
            arity(1, "drop NAME")?;
            Fault::DropConnections
        }
        "restart" => {
            arity(2, "restart NAME MS")?;
            Fault::Restart {
                down: millis(args[1], "MS", MAX_FAULT_DURATION)?,
            }
        }
        "stall" => {
            arity(2, "stall NAME MS")?;
            Fault::Stall {
                duration: millis(args[1], "MS", MAX_FAULT_DURATION)?,
            }
        }
        "dropwrites" => {
            arity(2, "dropwrites NAME MS")?;
            Fault::DropWrites {
                duration: millis(args[1], "MS", MAX_FAULT_DURATION)?,
            }
        }
        "slow" => {
            arity(3, "slow NAME DELAY_MS MS")?;
            Fault::Slow {
                delay: millis(args[1], "DELAY_MS", MAX_DELAY)?,
                duration: millis(args[2], "MS", MAX_FAULT_DURATION)?,
            }
        }
        "exception" => {
            arity(4, "exception NAME UNIT CODE MS")?;
            Fault::Exception {
                unit: unit(args[1])?,
                code: number(args[2], "CODE", 1, 255)? as u8,
                duration: millis(args[3], "MS", MAX_FAULT_DURATION)?,
            }
        }
        "garbage" => {
            arity(2, "garbage NAME MS")?;
            Fault::Garbage {
                duration: millis(args[1], "MS", MAX_FAULT_DURATION)?,
            }
        }
        "obstruct" => {
            arity(3, "obstruct NAME UNIT on|off")?;
            let on = match args[2] {
                "on" => true,
                "off" => false,
                other => return Err(format!("expected on or off, got {other:?}")),
            };
            Fault::Obstruct {
                unit: unit(args[1])?,
                on,
            }
        }
        "press" => {
            arity(2, "press NAME UNIT")?;
            Fault::LocalPress {
                unit: unit(args[1])?,
            }
        }
        "fault" => {
            arity(3, "fault NAME UNIT CODE")?;
            Fault::MotorFault {
                unit: unit(args[1])?,
                code: number(args[2], "CODE", 1, u64::from(u16::MAX))? as u16,
            }
        }
        other => return Err(format!("unknown command {other:?} (try help)")),
    };
    let controller = find(args[0])?;
    debug!(command = line, "control port");
    controller.inject(fault).await.map_err(|e| e.to_string())?;
    Ok(String::new())
}

fn number(s: &str, what: &str, min: u64, max: u64) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{what} must be a number from {min} to {max}, got {s:?}"
        )),
    }
}

fn millis(s: &str, what: &str, max: Duration) -> Result<Duration, String> {
    number(s, what, 1, max.as_millis() as u64).map(Duration::from_millis)
}

fn unit(s: &str) -> Result<u8, String> {
    number(
        s,
        "UNIT",
        u64::from(crate::controller::MIN_UNIT),
        u64::from(crate::controller::MAX_UNIT),
    )
    .map(|u| u as u8)
}

/// `name address profile units=1,2,3`: the line printed at start and by `list`.
pub fn describe(c: &SimController) -> String {
    let units: Vec<String> = c.units().iter().map(u8::to_string).collect();
    format!(
        "{} {} {} units={}",
        c.name(),
        c.place(),
        c.profile().id,
        units.join(",")
    )
}

fn status(c: &SimController) -> String {
    let mut out = String::new();
    for g in c.gates() {
        let o = g.observation;
        let _ = write!(
            out,
            "unit={} state={} position={:.1} obstructed={} fault={} cycles={}",
            g.unit,
            serde_state(o.state),
            g.position,
            o.obstructed,
            o.fault_code.map_or("-".to_string(), |c| c.to_string()),
            o.cycles.map_or("-".to_string(), |c| c.value.to_string()),
        );
        let on: Vec<String> = g
            .coils
            .iter()
            .filter(|(_, _, on)| *on)
            .map(|(coil, _, _)| coil.to_string())
            .collect();
        if !on.is_empty() {
            let _ = write!(out, " coils_on={}", on.join(","));
        }
        out.push('\n');
    }
    let f = c.faults();
    let mut faults = Vec::new();
    if f.down {
        faults.push("down".to_string());
    }
    if let Some(left) = f.stall {
        faults.push(format!("stall:{}ms", left.as_millis()));
    }
    if let Some(left) = f.drop_writes {
        faults.push(format!("dropwrites:{}ms", left.as_millis()));
    }
    if let Some((delay, left)) = f.slow {
        faults.push(format!(
            "slow:{}ms:{}ms",
            delay.as_millis(),
            left.as_millis()
        ));
    }
    for (unit, code, left) in &f.exceptions {
        faults.push(format!("exception:{unit}:{code}:{}ms", left.as_millis()));
    }
    if let Some(left) = f.garbage {
        faults.push(format!("garbage:{}ms", left.as_millis()));
    }
    let _ = writeln!(
        out,
        "faults={}",
        if faults.is_empty() {
            "-".to_string()
        } else {
            faults.join(",")
        }
    );
    out
}

fn serde_state(state: gatehouse_actors::gate::HwState) -> &'static str {
    gatehouse_actors::gate::GateState::from(state).as_str()
}

fn writes(c: &SimController, n: usize) -> String {
    let now = Instant::now();
    let all = c.writes();
    let mut out = String::new();
    for w in all.iter().skip(all.len().saturating_sub(n)) {
        let _ = writeln!(
            out,
            "unit={} {}={} value={} op={} accepted={} ago_ms={} from={}",
            w.unit,
            match w.kind {
                WriteKind::Coil => "coil",
                WriteKind::Register => "register",
            },
            w.address,
            w.value,
            w.op.map_or("-", |op| op.as_str()),
            w.accepted,
            now.saturating_duration_since(w.at).as_millis(),
            w.from.map_or_else(|| "-".to_string(), |a| a.to_string())
        );
    }
    out
}
