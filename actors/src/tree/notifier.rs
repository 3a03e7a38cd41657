//! The notifier: the root's child that turns what happens into email. It follows the bus
//! (committed gate events), watches link phases, and takes alerts from the API (login
//! lockouts); it matches them against the notification rules, queues one message per
//! recipient in the durable outbox (deduplicated per trigger, subject and recipient within
//! `dedupe_window`), and delivers the outbox through the [`Mailer`] with retries.
//!
//! Invariants:
//! - nothing is sent that is not first in the outbox, and a message leaves `pending` only
//!   when the server took it (`sent`), refused it for good, or it aged past
//!   `notify::MAX_AGE_MS` (`failed`): SMTP down or a restart delays mail, never loses it;
//! - after a transient failure delivery pauses until that message's next attempt, so a dead
//!   server is not hammered once per queued message;
//! - conditions that must persist (obstruction, left open, link down) are timed from when
//!   they began and told once per episode per rule;
//! - a store or mailer that is away costs a round, never the notifier (logged, retried).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::access::AccessStore;
use crate::clock::wall_ms;
use crate::gate::{EventKind, GateEvent, GateState};
use crate::ids::SiteId;
use crate::notify::{
    Alert, CLAIM_MS, MAX_AGE_MS, Mail, MailError, MailStatus, Mailer, NotifyStore, Rule, Trigger,
    recipients, render, retry_delay,
};
use crate::supervision::{ChildSpec, Restart};
use crate::tree::Fleet;
use crate::tree::link::LinkPhase;

/// Time between two rounds (persisting conditions, link phases, due mail).
pub const ROUND: Duration = Duration::from_secs(1);
/// Messages sent per round, at most (a backlog drains over several rounds).
const SENDS_PER_ROUND: usize = 20;

/// What the notifier shows `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct MailHealth {
    state: Mutex<MailState>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MailState {
    /// The last delivery attempt's transient failure, while delivery is paused by it.
    pub failing: Option<String>,
    /// Messages waiting, as last counted.
    pub pending: u64,
    /// Where mail goes.
    pub target: String,
}

impl MailHealth {
    pub fn state(&self) -> MailState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set(&self, change: impl FnOnce(&mut MailState)) {
        if let Ok(mut s) = self.state.lock() {
            change(&mut s);
        }
    }
}

/// The handle the API uses to raise alerts of its own (login lockouts).
#[derive(Clone, Default)]
pub struct Alerts {
    current: crate::supervision::Current<NotifierMsg>,
}

impl Alerts {
    /// Hands `alert` to the running notifier (dropped, and logged, while it restarts).
    pub fn raise(&self, alert: Alert) {
        match self.current.get() {
            Some(n) => {
                let _ = n.send_message(NotifierMsg::Alert(alert));
            }
            None => tracing::warn!(?alert, "notifier not running; alert not queued"),
        }
    }
}

#[derive(Clone)]
pub struct NotifierArgs {
    pub store: Arc<dyn NotifyStore>,
    pub access: Arc<dyn AccessStore>,
    pub mailer: Arc<dyn Mailer>,
    pub fleet: Fleet,
    /// Committed gate events (a new receiver per start).
    pub bus: Arc<dyn Fn() -> broadcast::Receiver<Arc<GateEvent>> + Send + Sync>,
    /// The base of links in messages.
    pub public_url: Option<String>,
    pub dedupe_window: Duration,
    /// The first retry after a transient failure (doubling from there).
    pub first_retry: Duration,
    pub health: Arc<MailHealth>,
}

/// The notifier's child spec (permanent) and the handle that reaches whichever instance runs.
pub fn child_spec(args: NotifierArgs) -> (ChildSpec, Alerts) {
    let alerts = Alerts::default();
    let current = alerts.current.clone();
    let spec = ChildSpec::tracked("notifier", Restart::Permanent, current, move || {
        (Notifier, args.clone())
    });
    (spec, alerts)
}

pub struct Notifier;

pub enum NotifierMsg {
    /// Internal: a committed gate event.
    Event(Arc<GateEvent>),
    /// Internal: time for a round.
    Round,
    /// Raised by someone else (the API).
    Alert(Alert),
}

/// A condition that must persist before it is told: since when it holds, and which rules
/// have told it already in this episode.
struct Episode {
    since_ms: u64,
    alert: Alert,
    told: HashSet<Uuid>,
}

pub struct NotifierState {
    args: NotifierArgs,
    follower: JoinHandle<()>,
    /// Keyed by (trigger, subject key).
    episodes: HashMap<(Trigger, String), Episode>,
    /// No delivery before this (wall ms): set by a transient failure.
    paused_until: u64,
    /// The outbox changed since the pending messages were last counted (for `MailHealth`):
    /// the count is a query, not worth making every round of an idle notifier.
    recount: bool,
}

impl Actor for Notifier {
    type Msg = NotifierMsg;
    type State = NotifierState;
    type Arguments = NotifierArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NotifierMsg>,
        args: NotifierArgs,
    ) -> Result<NotifierState, ActorProcessingErr> {
        let mut rx = (args.bus)();
        let me = myself.clone();
        // Forwards the bus into the mailbox; ends with the actor (aborted in post_stop) or
        // the bus.
        let follower = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        if me.send_message(NotifierMsg::Event(event)).is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "notifier fell behind the bus; events skipped");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        args.health.set(|s| s.target = args.mailer.describe());
        myself.send_message(NotifierMsg::Round)?;
        Ok(NotifierState {
            args,
            follower,
            episodes: HashMap::new(),
            paused_until: 0,
            recount: true,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NotifierMsg>,
        state: &mut NotifierState,
    ) -> Result<(), ActorProcessingErr> {
        state.follower.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NotifierMsg>,
        msg: NotifierMsg,
        state: &mut NotifierState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NotifierMsg::Event(event) => state.event(&event).await,
            NotifierMsg::Alert(alert) => state.tell(&alert, |_| true).await,
            NotifierMsg::Round => {
                state.links();
                state.persisting().await;
                state.deliver().await;
                state.count_pending().await;
                myself.send_after(ROUND, || NotifierMsg::Round);
            }
        }
        Ok(())
    }
}

impl NotifierState {
    /// The gate's site, name and console path, for an alert about it.
    fn gate_alert(&self, trigger: Trigger, event: &GateEvent) -> Alert {
        let spec = self.args.fleet.controller_of(&event.gate);
        let site = spec.as_ref().map(|c| c.site.clone());
        let name = spec
            .as_ref()
            .and_then(|c| c.gates.iter().find(|g| g.spec.id == event.gate))
            .map(|g| g.spec.name.clone())
            .unwrap_or_default();
        let subject = if name.is_empty() || name == event.gate.as_str() {
            format!("gate {}", event.gate)
        } else {
            format!("gate {} ({name})", event.gate)
        };
        let mut facts = vec![
            ("Gate".to_owned(), event.gate.to_string()),
            ("Controller".to_owned(), event.controller.to_string()),
        ];
        if let Some(site) = &site {
            facts.push(("Site".to_owned(), site.to_string()));
        }
        facts.push(("State".to_owned(), event.snapshot.state.as_str().to_owned()));
        if let Some(code) = event.snapshot.fault_code {
            facts.push(("Fault code".to_owned(), code.to_string()));
        }
        if let Some(reason) = event.snapshot.latched_fault {
            facts.push(("Fault".to_owned(), reason.as_str().to_owned()));
        }
        if let Some(cycles) = event.snapshot.cycles {
            facts.push(("Cycles".to_owned(), cycles.to_string()));
        }
        match event.kind {
            EventKind::MaintenanceDue { plan } | EventKind::MaintenanceOverdue { plan } => {
                facts.push(("Plan".to_owned(), plan.to_string()));
            }
            _ => {}
        }
        Alert {
            trigger,
            site,
            subject,
            key: format!("gate:{}", event.gate),
            at_ms: event.at_ms,
            facts,
            path: Some(format!("/console/#gate={}", event.gate)),
        }
    }

    async fn event(&mut self, event: &GateEvent) {
        let key = |t| (t, format!("gate:{}", event.gate));
        match event.kind {
            EventKind::StateChanged { from } => {
                let to = event.snapshot.state;
                if to == GateState::Fault && from != GateState::Fault {
                    let alert = self.gate_alert(Trigger::Fault, event);
                    self.tell(&alert, |_| true).await;
                }
                // Open (or stopped part way) is a condition that may persist.
                let open = matches!(to, GateState::Open | GateState::Stopped);
                if open && !self.episodes.contains_key(&key(Trigger::LeftOpen)) {
                    let alert = self.gate_alert(Trigger::LeftOpen, event);
                    self.begin(Trigger::LeftOpen, alert, event.at_ms);
                } else if !open && to != GateState::Offline {
                    // An offline gate may still be open: the episode goes on until it is
                    // seen otherwise.
                    self.episodes.remove(&key(Trigger::LeftOpen));
                }
            }
            EventKind::Obstruction { obstructed: true } => {
                let alert = self.gate_alert(Trigger::Obstruction, event);
                self.begin(Trigger::Obstruction, alert, event.at_ms);
            }
            EventKind::Obstruction { obstructed: false } => {
                self.episodes.remove(&key(Trigger::Obstruction));
            }
            EventKind::MaintenanceDue { .. } => {
                let alert = self.gate_alert(Trigger::MaintenanceDue, event);
                self.tell(&alert, |_| true).await;
            }
            EventKind::MaintenanceOverdue { .. } => {
                let alert = self.gate_alert(Trigger::MaintenanceOverdue, event);
                self.tell(&alert, |_| true).await;
            }
            _ => {}
        }
    }

    fn begin(&mut self, trigger: Trigger, alert: Alert, since_ms: u64) {
        self.episodes
            .entry((trigger, alert.key.clone()))
            .or_insert(Episode {
                since_ms,
                alert,
                told: HashSet::new(),
            });
    }

    /// Links down begin episodes; links up end them.
    fn links(&mut self) {
        let ctx = self.args.fleet.context().clone();
        let mut down = HashSet::new();
        for (controller, stats) in ctx.link_stats() {
            let status = stats.status();
            let key = format!("controller:{controller}");
            if matches!(status.phase, LinkPhase::Unreachable | LinkPhase::Restarting) {
                down.insert(key.clone());
                if !self
                    .episodes
                    .contains_key(&(Trigger::LinkDown, key.clone()))
                {
                    let site: Option<SiteId> = self
                        .args
                        .fleet
                        .controllers()
                        .iter()
                        .find(|c| c.id == controller)
                        .map(|c| c.site.clone());
                    let mut facts = vec![("Controller".to_owned(), controller.to_string())];
                    if let Some(site) = &site {
                        facts.push(("Site".to_owned(), site.to_string()));
                    }
                    if let Some(error) = &status.last_error {
                        facts.push(("Last error".to_owned(), error.clone()));
                    }
                    facts.push(("Failed attempts".to_owned(), status.failures.to_string()));
                    let alert = Alert {
                        trigger: Trigger::LinkDown,
                        site,
                        subject: format!("controller {controller}"),
                        key: key.clone(),
                        at_ms: status.since_ms,
                        facts,
                        path: Some("/console/".to_owned()),
                    };
                    self.begin(Trigger::LinkDown, alert, status.since_ms);
                }
            }
        }
        self.episodes
            .retain(|(t, k), _| *t != Trigger::LinkDown || down.contains(k));
    }

    /// Tells each persisting condition to the rules whose `after_s` it has now lasted.
    async fn persisting(&mut self) {
        if self.episodes.is_empty() {
            return;
        }
        let rules = match self.args.store.rules().await {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "notification rules unreadable; trying next round");
                return;
            }
        };
        let now = wall_ms();
        let mut due: Vec<(Alert, Vec<Uuid>)> = Vec::new();
        for ((trigger, _), episode) in self.episodes.iter_mut() {
            let ripe: Vec<Uuid> = rules
                .iter()
                .filter(|r| r.covers(*trigger, episode.alert.site.as_ref()))
                .filter(|r| !episode.told.contains(&r.id))
                .filter(|r| now.saturating_sub(episode.since_ms) >= r.after_s * 1_000)
                .map(|r| r.id)
                .collect();
            if !ripe.is_empty() {
                let mut alert = episode.alert.clone();
                let lasted_s = now.saturating_sub(episode.since_ms) / 1_000;
                alert
                    .facts
                    .push(("For".to_owned(), format!("{lasted_s} s so far")));
                due.push((alert, ripe));
            }
        }
        for (alert, ripe) in due {
            if self.queue(&alert, &rules, |r| ripe.contains(&r.id)).await
                && let Some(e) = self.episodes.get_mut(&(alert.trigger, alert.key.clone()))
            {
                e.told.extend(ripe);
            }
        }
    }

    /// Tells an instant alert to every rule that covers it.
    async fn tell(&mut self, alert: &Alert, which: impl Fn(&Rule) -> bool) {
        let rules = match self.args.store.rules().await {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, ?alert, "notification rules unreadable; alert not queued");
                return;
            }
        };
        self.queue(alert, &rules, which).await;
    }

    /// Queues one message per recipient of the chosen rules covering `alert`; true when the
    /// outbox has them (or nobody was to be told).
    async fn queue(
        &mut self,
        alert: &Alert,
        rules: &[Rule],
        which: impl Fn(&Rule) -> bool,
    ) -> bool {
        let chosen: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.covers(alert.trigger, alert.site.as_ref()) && which(r))
            .collect();
        if chosen.is_empty() {
            return true;
        }
        let users = match self.args.access.users().await {
            Ok(u) => u,
            Err(error) => {
                tracing::warn!(%error, ?alert, "users unreadable; alert not queued");
                return false;
            }
        };
        let mut to: Vec<&str> = chosen.iter().flat_map(|r| recipients(r, &users)).collect();
        to.sort_unstable();
        to.dedup();
        if to.is_empty() {
            return true;
        }
        let rendered = render(alert, self.args.public_url.as_deref());
        let now = wall_ms();
        let mails: Vec<Mail> = to
            .iter()
            .map(|r| Mail::new(alert.dedupe_key(), r, &rendered, now))
            .collect();
        let window = self.args.dedupe_window.as_millis() as u64;
        match self.args.store.enqueue(mails, window, now).await {
            Ok(queued) => {
                self.recount |= queued > 0;
                tracing::info!(
                    trigger = alert.trigger.as_str(),
                    subject = %alert.subject,
                    queued,
                    "notification"
                );
                true
            }
            Err(error) => {
                tracing::warn!(%error, ?alert, "outbox unavailable; alert not queued");
                false
            }
        }
    }

    /// Sends what is due, unless a transient failure paused delivery.
    async fn deliver(&mut self) {
        let now = wall_ms();
        if now < self.paused_until {
            return;
        }
        let due = match self.args.store.due(now, SENDS_PER_ROUND).await {
            Ok(d) => d,
            Err(error) => {
                tracing::warn!(%error, "outbox unreadable; trying next round");
                return;
            }
        };
        self.recount |= !due.is_empty();
        for mut mail in due {
            // Another notifier (another node) may be sending it: only the claimant does.
            let now = wall_ms();
            match self.args.store.claim(mail.id, now, now + CLAIM_MS).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!(%error, "outbox claim failed; trying next round");
                    return;
                }
            }
            mail.attempts = mail.attempts.saturating_add(1);
            let result = self.args.mailer.send(&mail).await;
            let now = wall_ms();
            let mut paused = None;
            match result {
                Ok(()) => {
                    mail.status = MailStatus::Sent;
                    mail.sent_at_ms = Some(now);
                    mail.last_error = None;
                    self.args.health.set(|s| s.failing = None);
                }
                Err(MailError::Permanent(why)) => {
                    tracing::warn!(to = %mail.recipient, %why, "message refused for good");
                    mail.status = MailStatus::Failed;
                    mail.last_error = Some(why);
                }
                Err(MailError::Transient(why)) => {
                    if now.saturating_sub(mail.created_at_ms) >= MAX_AGE_MS {
                        mail.status = MailStatus::Failed;
                    } else {
                        // Up to a fifth sooner at random, so that a backlog does not retry in
                        // lockstep.
                        let first = self.args.first_retry.as_millis() as u64;
                        let delay = retry_delay(first, mail.attempts);
                        let jitter = rand::random_range(0..=delay / 5);
                        mail.next_attempt_at_ms = now + delay - jitter;
                        paused = Some(mail.next_attempt_at_ms);
                    }
                    tracing::warn!(to = %mail.recipient, attempts = mail.attempts, %why, "mail not delivered; will retry");
                    self.args.health.set(|s| s.failing = Some(why.clone()));
                    mail.last_error = Some(why);
                }
            }
            if let Err(error) = self.args.store.attempted(mail).await {
                // The message stays pending as stored: it is tried again (a duplicate is
                // possible, never a loss).
                tracing::warn!(%error, "a delivery was not recorded");
            }
            if let Some(until) = paused {
                self.paused_until = until;
                break;
            }
        }
    }

    /// Counts the waiting messages for `MailHealth`, when the outbox changed.
    async fn count_pending(&mut self) {
        if self.recount
            && let Ok(pending) = self.args.store.pending().await
        {
            self.args.health.set(|s| s.pending = pending);
            self.recount = false;
        }
    }
}
