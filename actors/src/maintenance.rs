//! Maintenance: plans say how often a gate needs service (every N cycles, every N days, or
//! both, with a warning margin); records say what was done; progress says where each gate
//! stands against each plan that applies to it. The rules live here, pure, with time and the
//! live cycle counter passed in: which plans apply to a gate ([`effective_plans`]), how far it
//! is ([`assess`]) and what a plan may say ([`PlanDraft::validate`]). The scheduler actor
//! (`tree/scheduler.rs`) and the REST handlers only call them; the [`MaintenanceStore`] port
//! is implemented in `adapters/`.
//!
//! Rules, decided once here:
//! - a gate's plans are its own, when it has any; otherwise its site's (site plans are the
//!   default for gates that have none of their own);
//! - progress starts when a plan first applies to a gate (the scheduler records the time and
//!   the cycle counter then), and restarts from a completed record of that plan: the cycle
//!   counter and time at completion;
//! - a plan is `due` when the gate is within the warning margin of its limit (cycles or
//!   days, whichever comes first) and `overdue` once past it;
//! - a gate whose cycle counter is unknown (never reported, or offline since start) is
//!   assessed on days only until it reports one.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{GateId, SiteId};
use crate::ports::BoxFuture;
use crate::store::StoreError;

/// Plans per gate or site, at most: enough for every service a gate has (lubrication,
/// springs, annual inspection, safety edges…), few enough to assess the fleet every minute.
pub const MAX_PLANS_PER_SCOPE: usize = 16;
/// The longest interval a plan may have, in cycles.
pub const MAX_EVERY_CYCLES: u64 = 10_000_000;
/// The longest interval a plan may have, in days (ten years).
pub const MAX_EVERY_DAYS: u32 = 3_650;
/// Characters in a plan's title, at most.
pub const MAX_TITLE: usize = 120;
/// Characters in a record's work description and notes, at most each.
pub const MAX_TEXT: usize = 4_000;
/// Parts listed on one record, at most, and characters per part.
pub const MAX_PARTS: usize = 50;
pub const MAX_PART: usize = 200;

const DAY_MS: u64 = 86_400_000;

/// Where a plan applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanScope {
    Gate(GateId),
    /// Every gate of the site that has no plan of its own.
    Site(SiteId),
}

/// What a caller asks a plan to be (the fields an admin writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDraft {
    pub scope: PlanScope,
    pub title: String,
    pub every_cycles: Option<u64>,
    pub every_days: Option<u32>,
    /// Due this many cycles before the limit (0: due only when reached).
    pub warn_cycles: u64,
    /// Due this many days before the limit.
    pub warn_days: u32,
}

/// Why a plan or record was refused: the field to fix and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    pub field: &'static str,
    pub why: String,
}

fn invalid(field: &'static str, why: impl Into<String>) -> Invalid {
    Invalid {
        field,
        why: why.into(),
    }
}

impl PlanDraft {
    pub fn validate(&self) -> Result<(), Invalid> {
        let title = self.title.trim();
        if title.is_empty() {
            return Err(invalid("title", "a plan needs a title"));
        }
        if title.chars().count() > MAX_TITLE {
            return Err(invalid("title", format!("at most {MAX_TITLE} characters")));
        }
        if title.chars().any(char::is_control) {
            return Err(invalid("title", "no control characters"));
        }
        if self.every_cycles.is_none() && self.every_days.is_none() {
            return Err(invalid(
                "every_cycles",
                "a plan needs every_cycles, every_days or both",
            ));
        }
        if let Some(n) = self.every_cycles {
            if n == 0 || n > MAX_EVERY_CYCLES {
                return Err(invalid(
                    "every_cycles",
                    format!("from 1 to {MAX_EVERY_CYCLES}"),
                ));
            }
            if self.warn_cycles >= n {
                return Err(invalid(
                    "warn_cycles",
                    "the warning margin must be smaller than every_cycles",
                ));
            }
        } else if self.warn_cycles != 0 {
            return Err(invalid(
                "warn_cycles",
                "a warning margin in cycles needs every_cycles",
            ));
        }
        if let Some(n) = self.every_days {
            if n == 0 || n > MAX_EVERY_DAYS {
                return Err(invalid("every_days", format!("from 1 to {MAX_EVERY_DAYS}")));
            }
            if self.warn_days >= n {
                return Err(invalid(
                    "warn_days",
                    "the warning margin must be smaller than every_days",
                ));
            }
        } else if self.warn_days != 0 {
            return Err(invalid(
                "warn_days",
                "a warning margin in days needs every_days",
            ));
        }
        Ok(())
    }
}

/// A plan as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: Uuid,
    pub scope: PlanScope,
    pub title: String,
    pub every_cycles: Option<u64>,
    pub every_days: Option<u32>,
    pub warn_cycles: u64,
    pub warn_days: u32,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl Plan {
    pub fn new(id: Uuid, draft: PlanDraft, now_ms: u64) -> Plan {
        Plan {
            id,
            scope: draft.scope,
            title: draft.title.trim().to_owned(),
            every_cycles: draft.every_cycles,
            every_days: draft.every_days,
            warn_cycles: draft.warn_cycles,
            warn_days: draft.warn_days,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// This plan with `draft`'s fields (its id, scope and creation time kept).
    pub fn revised(&self, draft: PlanDraft, now_ms: u64) -> Plan {
        Plan {
            id: self.id,
            scope: self.scope.clone(),
            created_at_ms: self.created_at_ms,
            ..Plan::new(self.id, draft, now_ms)
        }
    }
}

/// The plans that apply to `gate` of `site`: its own if it has any, else its site's.
pub fn effective_plans<'a>(plans: &'a [Plan], gate: &GateId, site: &SiteId) -> Vec<&'a Plan> {
    let own: Vec<&Plan> = plans
        .iter()
        .filter(|p| matches!(&p.scope, PlanScope::Gate(g) if g == gate))
        .collect();
    if !own.is_empty() {
        return own;
    }
    plans
        .iter()
        .filter(|p| matches!(&p.scope, PlanScope::Site(s) if s == site))
        .collect()
}

/// How far a gate is against one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Due,
    Overdue,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Due => "due",
            Level::Overdue => "overdue",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "ok" => Some(Level::Ok),
            "due" => Some(Level::Due),
            "overdue" => Some(Level::Overdue),
            _ => None,
        }
    }
}

/// Where one gate stands against one plan since its last service, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub plan: Uuid,
    pub gate: GateId,
    /// The last service (or when the plan started to apply), wall clock.
    pub since_ms: u64,
    /// The gate's cycle counter then, if it was known.
    pub since_cycles: Option<u64>,
    /// The highest level already announced on the gate's event stream since then, so that
    /// a restart does not announce it again.
    pub announced: Level,
}

/// One gate against one plan, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    pub level: Level,
    /// Cycles since the last service (none while the counter is unknown).
    pub cycles_since: Option<u64>,
    /// Cycles until the limit; negative once past it (none without a cycle limit or counter).
    pub cycles_left: Option<i64>,
    pub days_since: u64,
    /// Days until the limit; negative once past it (none without a day limit).
    pub days_left: Option<i64>,
    /// When the day limit falls, wall clock (none without a day limit).
    pub due_by_ms: Option<u64>,
}

/// Assesses `progress` against `plan` with the gate's live cycle counter, at `now_ms`.
pub fn assess(plan: &Plan, progress: &Progress, cycles: Option<u64>, now_ms: u64) -> Assessment {
    let cycles_since = match (cycles, progress.since_cycles) {
        // A counter below the one at service was replaced or reset: count from zero.
        (Some(now), Some(then)) => Some(now.checked_sub(then).unwrap_or(now)),
        _ => None,
    };
    let mut level = Level::Ok;
    let mut raise = |l: Level| level = level.max(l);
    let cycles_left = match (plan.every_cycles, cycles_since) {
        (Some(every), Some(done)) => {
            let left = every as i64 - done as i64;
            if left <= 0 {
                raise(Level::Overdue);
            } else if left as u64 <= plan.warn_cycles {
                raise(Level::Due);
            }
            Some(left)
        }
        _ => None,
    };
    let elapsed_ms = now_ms.saturating_sub(progress.since_ms);
    let days_since = elapsed_ms / DAY_MS;
    let (days_left, due_by_ms) = match plan.every_days {
        Some(every) => {
            let limit_ms = u64::from(every) * DAY_MS;
            let warn_ms = u64::from(plan.warn_days) * DAY_MS;
            if elapsed_ms >= limit_ms {
                raise(Level::Overdue);
            } else if limit_ms - elapsed_ms <= warn_ms {
                raise(Level::Due);
            }
            // Whole days left, rounded down (0 on the last day; negative once past).
            let left = (limit_ms as i128 - elapsed_ms as i128).div_euclid(DAY_MS as i128);
            (
                Some(left as i64),
                Some(progress.since_ms.saturating_add(limit_ms)),
            )
        }
        None => (None, None),
    };
    Assessment {
        level,
        cycles_since,
        cycles_left,
        days_since,
        days_left,
        due_by_ms,
    }
}

/// Where a maintenance record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Work in progress (the gate may be locked out meanwhile).
    Open,
    Completed,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Open => "open",
            RecordStatus::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<RecordStatus> {
        match s {
            "open" => Some(RecordStatus::Open),
            "completed" => Some(RecordStatus::Completed),
            _ => None,
        }
    }
}

/// What was done, as written by whoever did it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Work {
    pub summary: String,
    pub parts: Vec<String>,
    pub notes: String,
}

impl Work {
    pub fn validate(&self) -> Result<(), Invalid> {
        let text = |field: &'static str, s: &str| {
            if s.chars().count() > MAX_TEXT {
                return Err(invalid(field, format!("at most {MAX_TEXT} characters")));
            }
            if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                return Err(invalid(
                    field,
                    "no control characters but new lines and tabs",
                ));
            }
            Ok(())
        };
        text("summary", &self.summary)?;
        text("notes", &self.notes)?;
        if self.parts.len() > MAX_PARTS {
            return Err(invalid("parts", format!("at most {MAX_PARTS} parts")));
        }
        for part in &self.parts {
            if part.trim().is_empty() || part.chars().count() > MAX_PART {
                return Err(invalid(
                    "parts",
                    format!("each part is 1 to {MAX_PART} characters"),
                ));
            }
            if part.chars().any(char::is_control) {
                return Err(invalid("parts", "no control characters"));
            }
        }
        Ok(())
    }
}

/// A maintenance record as stored. Records outlive their gate (like its events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: Uuid,
    pub gate: GateId,
    /// The gate's site when the record was opened (records are listed by site).
    pub site: SiteId,
    /// The plan this service answers, if any; completing the record restarts its progress.
    pub plan: Option<Uuid>,
    pub status: RecordStatus,
    pub opened_at_ms: u64,
    /// Who opened it (an audit actor: `user:<uuid>` or `key:<uuid>`).
    pub opened_by: String,
    /// Whether opening it locked the gate out (completing it then unlocks the gate).
    pub lockout: bool,
    pub completed_at_ms: Option<u64>,
    pub completed_by: Option<String>,
    /// The gate's cycle counter at completion, if known.
    pub cycles_at: Option<u64>,
    pub work: Work,
    /// Photos and documents, oldest first.
    pub attachments: Vec<Attachment>,
}

/// Attachments per record, at most.
pub const MAX_ATTACHMENTS: usize = 20;
/// What an attachment may be: photos, PDFs, plain text.
pub const ATTACHMENT_TYPES: [&str; 5] = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "application/pdf",
    "text/plain",
];

/// A file attached to a maintenance record (its body is in the blob store under `key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: Uuid,
    /// As uploaded (shown, and used for the download's file name).
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub key: String,
    pub at_ms: u64,
    pub by: String,
}

/// A file name as given, checked: 1 to 120 characters of letters, digits, `.`, `_`, `-`,
/// not starting with a dot.
pub fn check_file_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 120
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            "1 to 120 letters, digits, '.', '_' or '-', not starting with '.'",
        ))
    }
}

/// Which records to list: newest first, `limit` of them, older than `before` (a record id
/// from an earlier page) if given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordQuery {
    pub gate: Option<GateId>,
    pub site: Option<SiteId>,
    pub status: Option<RecordStatus>,
    pub before: Option<Uuid>,
    pub limit: usize,
}

/// Durable maintenance state.
pub trait MaintenanceStore: Send + Sync + 'static {
    /// Every plan, oldest first.
    fn plans(&self) -> BoxFuture<'_, Result<Vec<Plan>, StoreError>>;
    /// Inserts or replaces a plan; `Rejected` when its gate or site does not exist.
    fn put_plan(&self, plan: Plan) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Deletes a plan and its progress; false when there was none. Records keep their text
    /// and lose the reference.
    fn delete_plan(&self, id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Every gate's progress against every plan that ever applied to it.
    fn progress(&self) -> BoxFuture<'_, Result<Vec<Progress>, StoreError>>;
    /// Starts tracking a gate against a plan, unless it is tracked already (the stored one
    /// wins).
    fn start_progress(&self, progress: Progress) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Sets the cycle counter a gate's progress counts from, where it was unknown when the
    /// plan started to apply (the gate had not reported one yet).
    fn first_cycles(
        &self,
        plan: Uuid,
        gate: GateId,
        cycles: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Records that `level` was announced for this gate and plan (only ever raises it).
    fn announced(
        &self,
        plan: Uuid,
        gate: GateId,
        level: Level,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn records(&self, query: RecordQuery) -> BoxFuture<'_, Result<Vec<Record>, StoreError>>;
    fn record(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Record>, StoreError>>;
    /// Inserts a new record; a completed one restarts its plan's progress in the same
    /// transaction.
    fn insert_record(&self, record: Record) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Completes an open record and restarts its plan's progress, in one transaction;
    /// `Rejected` when the record is not open any more (another completion won).
    fn complete_record(&self, record: Record) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Adds an attachment to a record; `Rejected` when the record is gone or holds
    /// [`MAX_ATTACHMENTS`] already.
    fn add_attachment(
        &self,
        record: Uuid,
        attachment: Attachment,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(s: &str) -> GateId {
        GateId::new(s).unwrap()
    }
    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }

    fn plan(scope: PlanScope, every_cycles: Option<u64>, every_days: Option<u32>) -> Plan {
        Plan::new(
            Uuid::new_v4(),
            PlanDraft {
                scope,
                title: "service".into(),
                every_cycles,
                every_days,
                warn_cycles: every_cycles.map_or(0, |n| n / 10),
                warn_days: every_days.map_or(0, |n| n / 10),
            },
            0,
        )
    }

    fn progress(p: &Plan, since_ms: u64, since_cycles: Option<u64>) -> Progress {
        Progress {
            plan: p.id,
            gate: gate("g1"),
            since_ms,
            since_cycles,
            announced: Level::Ok,
        }
    }

    #[test]
    fn a_gate_with_plans_of_its_own_ignores_its_sites_plans() {
        let own = plan(PlanScope::Gate(gate("g1")), Some(100), None);
        let site_default = plan(PlanScope::Site(site("s1")), None, Some(30));
        let other = plan(PlanScope::Gate(gate("g2")), Some(5), None);
        let plans = vec![site_default.clone(), own.clone(), other];
        let got = effective_plans(&plans, &gate("g1"), &site("s1"));
        assert_eq!(got, vec![&own]);
        let got = effective_plans(&plans, &gate("g3"), &site("s1"));
        assert_eq!(got, vec![&site_default]);
        assert!(effective_plans(&plans, &gate("g3"), &site("s2")).is_empty());
    }

    #[test]
    fn cycles_since_service_decide_due_then_overdue() {
        let p = plan(PlanScope::Gate(gate("g1")), Some(1_000), None);
        let pr = progress(&p, 0, Some(5_000));
        let at = |cycles| assess(&p, &pr, Some(cycles), 0);
        assert_eq!(at(5_899).level, Level::Ok);
        assert_eq!(at(5_900).level, Level::Due, "within the 100-cycle margin");
        assert_eq!(at(5_900).cycles_left, Some(100));
        assert_eq!(at(6_000).level, Level::Overdue);
        assert_eq!(at(6_250).cycles_left, Some(-250));
        assert_eq!(at(6_250).cycles_since, Some(1_250));
    }

    #[test]
    fn a_counter_below_the_one_at_service_counts_from_zero() {
        let p = plan(PlanScope::Gate(gate("g1")), Some(1_000), None);
        let pr = progress(&p, 0, Some(50_000));
        let a = assess(&p, &pr, Some(120), 0);
        assert_eq!(a.cycles_since, Some(120));
        assert_eq!(a.level, Level::Ok);
    }

    #[test]
    fn days_since_service_decide_due_then_overdue() {
        let p = plan(PlanScope::Gate(gate("g1")), None, Some(30));
        let start = 1_000 * DAY_MS;
        let pr = progress(&p, start, None);
        let on = |days: u64, extra_ms: u64| assess(&p, &pr, None, start + days * DAY_MS + extra_ms);
        assert_eq!(on(26, DAY_MS - 1).level, Level::Ok);
        assert_eq!(on(27, 0).level, Level::Due, "3 days (10 %) before");
        assert_eq!(on(27, 0).days_left, Some(3));
        assert_eq!(on(29, 1).days_left, Some(0));
        assert_eq!(on(30, 0).level, Level::Overdue);
        assert_eq!(on(31, 1).days_left, Some(-2));
        assert_eq!(on(0, 0).due_by_ms, Some(start + 30 * DAY_MS));
    }

    #[test]
    fn whichever_limit_comes_first_decides() {
        let p = plan(PlanScope::Gate(gate("g1")), Some(1_000), Some(365));
        let pr = progress(&p, 0, Some(0));
        assert_eq!(assess(&p, &pr, Some(1_000), DAY_MS).level, Level::Overdue);
        assert_eq!(
            assess(&p, &pr, Some(10), 400 * DAY_MS).level,
            Level::Overdue
        );
        assert_eq!(assess(&p, &pr, Some(10), DAY_MS).level, Level::Ok);
    }

    #[test]
    fn an_unknown_counter_is_assessed_on_days_only() {
        let p = plan(PlanScope::Gate(gate("g1")), Some(1_000), Some(365));
        let pr = progress(&p, 0, None);
        let a = assess(&p, &pr, Some(99_999), DAY_MS);
        assert_eq!(
            (a.level, a.cycles_since, a.cycles_left),
            (Level::Ok, None, None)
        );
    }

    #[test]
    fn plans_that_cannot_mean_anything_are_refused() {
        let ok = PlanDraft {
            scope: PlanScope::Gate(gate("g1")),
            title: "Springs".into(),
            every_cycles: Some(10_000),
            every_days: None,
            warn_cycles: 500,
            warn_days: 0,
        };
        assert_eq!(ok.validate(), Ok(()));
        let field = |d: PlanDraft| d.validate().unwrap_err().field;
        assert_eq!(
            field(PlanDraft {
                every_cycles: None,
                warn_cycles: 0,
                ..ok.clone()
            }),
            "every_cycles"
        );
        assert_eq!(
            field(PlanDraft {
                every_cycles: Some(0),
                warn_cycles: 0,
                ..ok.clone()
            }),
            "every_cycles"
        );
        assert_eq!(
            field(PlanDraft {
                warn_cycles: 10_000,
                ..ok.clone()
            }),
            "warn_cycles"
        );
        assert_eq!(
            field(PlanDraft {
                warn_days: 3,
                ..ok.clone()
            }),
            "warn_days"
        );
        assert_eq!(
            field(PlanDraft {
                title: "  ".into(),
                ..ok.clone()
            }),
            "title"
        );
        assert_eq!(
            field(PlanDraft {
                every_days: Some(MAX_EVERY_DAYS + 1),
                ..ok.clone()
            }),
            "every_days"
        );
    }

    #[test]
    fn work_text_is_bounded_and_printable() {
        let ok = Work {
            summary: "Replaced both springs\nand lubricated".into(),
            parts: vec!["spring 2x".into()],
            notes: String::new(),
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = Work {
            parts: vec![String::new()],
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "parts");
        let bad = Work {
            notes: "a\u{7}".into(),
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "notes");
        let bad = Work {
            summary: "x".repeat(MAX_TEXT + 1),
            ..ok
        };
        assert_eq!(bad.validate().unwrap_err().field, "summary");
    }
}
