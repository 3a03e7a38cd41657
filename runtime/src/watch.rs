//! Gate events as log lines: the structured log of `gatehouse serve`, and the human-readable
//! live view that `gatehouse demo` prints until the HTTP/WebSocket layer gives a better one.

use std::sync::Arc;

use gatehouse_actors::gate::GateEvent;
use gatehouse_actors::gate::{Cause, CommandStatus, EventKind, GateState};
use tokio::sync::broadcast;

/// Logs every event through `tracing` (structured, for `serve`).
pub async fn log_events(mut rx: broadcast::Receiver<Arc<GateEvent>>) {
    loop {
        match rx.recv().await {
            Ok(ev) => tracing::info!(
                gate = %ev.gate,
                seq = ev.seq,
                cause = %cause(&ev.cause),
                state = ev.snapshot.state.as_str(),
                "{}",
                describe(&ev)
            ),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("event log fell behind; {n} events not logged")
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Prints every event as one line on stdout (for the demo).
pub async fn print_events(mut rx: broadcast::Receiver<Arc<GateEvent>>) {
    loop {
        match rx.recv().await {
            Ok(ev) => println!(
                "{} {:<12} #{:<4} {:<44} [{}]",
                clock(ev.at_ms),
                ev.gate.as_str(),
                ev.seq,
                describe(&ev),
                cause(&ev.cause)
            ),
            Err(broadcast::error::RecvError::Lagged(n)) => println!("... {n} events skipped"),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `HH:MM:SS.mmm` UTC.
pub fn clock(at_ms: u64) -> String {
    let ms = at_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000
    )
}

fn cause(c: &Cause) -> String {
    match c {
        Cause::Command(id) => format!("command {}", &id.to_string()[..8]),
        Cause::Local => "local".into(),
        Cause::System => "system".into(),
    }
}

/// One line saying what happened.
pub fn describe(ev: &GateEvent) -> String {
    let s = &ev.snapshot;
    match ev.kind {
        EventKind::StateChanged { from } => {
            let mut line = format!("{} -> {}", from.as_str(), s.state.as_str());
            if let Some(p) = s.position {
                line.push_str(&format!(" ({p}%)"));
            }
            if s.state == GateState::Fault || s.state == GateState::Offline {
                if let Some(code) = s.fault_code {
                    line.push_str(&format!(" code {code}"));
                }
                if let Some(latched) = s.latched_fault {
                    line.push_str(&format!(" ({})", latched.as_str()));
                }
            }
            line
        }
        EventKind::Obstruction { obstructed: true } => "obstruction detected".into(),
        EventKind::Obstruction { obstructed: false } => "obstruction cleared".into(),
        EventKind::AutoCloseWarning { closes_in_ms } => {
            format!("auto-close in {:.1} s", closes_in_ms as f64 / 1000.0)
        }
        EventKind::LeftOpen { open_for_ms } => {
            format!("left open for {} s", open_for_ms / 1000)
        }
        EventKind::LockedOut => "locked out".into(),
        EventKind::Unlocked => "unlocked".into(),
        EventKind::HeldOpen => "held open".into(),
        EventKind::Released => "released".into(),
        EventKind::MaintenanceDue { plan } => format!("maintenance due (plan {plan})"),
        EventKind::MaintenanceOverdue { plan } => format!("maintenance overdue (plan {plan})"),
        EventKind::CommandFinished { action, status, .. } => {
            format!("{}: {}", action.as_str(), status_text(status))
        }
    }
}

pub fn status_text(status: CommandStatus) -> String {
    match status {
        CommandStatus::Accepted => "accepted".into(),
        CommandStatus::Completed => "completed".into(),
        CommandStatus::Rejected(r) => format!("rejected ({})", r.as_str()),
        CommandStatus::Failed(r) => format!("failed ({})", r.as_str()),
        CommandStatus::TimedOut => "timed out".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_print_in_their_wire_spelling() {
        assert_eq!(
            status_text(CommandStatus::Failed(
                gatehouse_actors::gate::FailReason::TravelTimeout
            )),
            "failed (travel_timeout)"
        );
        assert_eq!(clock(3_723_004), "01:02:03.004");
    }
}
