//! Notifications: rules map triggers (a gate fault, an obstruction or an open gate that
//! persists, a link down, maintenance due or overdue, a login lockout) to recipients (users,
//! roles, per site); an alert becomes one email per recipient in a durable outbox, which the
//! notifier (`tree/notifier.rs`) delivers through the [`Mailer`] port with retries.
//!
//! Decided here, pure:
//! - what a rule may say ([`RuleDraft::validate`]) and whom it reaches ([`recipients`]);
//! - the dedupe key of an alert (trigger and subject): one flapping gate sends one email per
//!   recipient per dedupe window, not one per flap;
//! - the retry schedule ([`retry_delay`]) and when a message is given up ([`MAX_AGE_MS`]);
//! - the text and HTML of each message ([`render`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{LinkPurpose, Role, UserId, UserRecord};
use crate::clock::utc;
use crate::ids::SiteId;
use crate::ports::BoxFuture;
use crate::store::StoreError;

/// Users and roles named by one rule, at most each.
pub const MAX_RULE_RECIPIENTS: usize = 50;
/// The longest a condition may be required to persist before it is told (a week).
pub const MAX_AFTER_S: u64 = 7 * 86_400;
/// A message that could not be delivered for this long is given up (marked failed, kept).
pub const MAX_AGE_MS: u64 = 72 * 3_600_000;
/// First retry after a transient failure; doubling up to [`MAX_RETRY_DELAY_MS`].
pub const FIRST_RETRY_MS: u64 = 30_000;
pub const MAX_RETRY_DELAY_MS: u64 = 30 * 60_000;
/// Characters of an address, at most (RFC 5321's path limit).
pub const MAX_ADDRESS: usize = 254;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A gate went to `fault`.
    Fault,
    /// A gate stayed obstructed for the rule's `after_s`.
    Obstruction,
    /// A gate stayed open for the rule's `after_s`.
    LeftOpen,
    /// A controller's link stayed down for the rule's `after_s`.
    LinkDown,
    MaintenanceDue,
    MaintenanceOverdue,
    /// An account or an address was locked out of logging in after failed attempts.
    LoginLockout,
}

impl Trigger {
    pub const ALL: [Trigger; 7] = [
        Trigger::Fault,
        Trigger::Obstruction,
        Trigger::LeftOpen,
        Trigger::LinkDown,
        Trigger::MaintenanceDue,
        Trigger::MaintenanceOverdue,
        Trigger::LoginLockout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Fault => "fault",
            Trigger::Obstruction => "obstruction",
            Trigger::LeftOpen => "left_open",
            Trigger::LinkDown => "link_down",
            Trigger::MaintenanceDue => "maintenance_due",
            Trigger::MaintenanceOverdue => "maintenance_overdue",
            Trigger::LoginLockout => "login_lockout",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether the trigger is a condition that must persist for the rule's `after_s`.
    pub fn persists(self) -> bool {
        matches!(
            self,
            Trigger::Obstruction | Trigger::LeftOpen | Trigger::LinkDown
        )
    }

    /// Whether the trigger concerns one site (a login lockout concerns none).
    pub fn has_site(self) -> bool {
        self != Trigger::LoginLockout
    }

    fn title(self) -> &'static str {
        match self {
            Trigger::Fault => "Gate fault",
            Trigger::Obstruction => "Gate obstructed",
            Trigger::LeftOpen => "Gate left open",
            Trigger::LinkDown => "Controller unreachable",
            Trigger::MaintenanceDue => "Maintenance due",
            Trigger::MaintenanceOverdue => "Maintenance overdue",
            Trigger::LoginLockout => "Login locked out",
        }
    }
}

/// What an admin writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDraft {
    pub trigger: Trigger,
    /// Only alerts of this site (none: every site).
    pub site: Option<SiteId>,
    /// For conditions that persist: how long before telling (0: at once).
    pub after_s: u64,
    pub users: Vec<UserId>,
    pub roles: Vec<Role>,
}

/// Why a rule was refused: the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    pub field: &'static str,
    pub why: String,
}

impl RuleDraft {
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |field, why: &str| {
            Err(Invalid {
                field,
                why: why.to_owned(),
            })
        };
        if self.users.is_empty() && self.roles.is_empty() {
            return invalid("users", "a rule needs at least one user or role");
        }
        if self.users.len() > MAX_RULE_RECIPIENTS || self.roles.len() > MAX_RULE_RECIPIENTS {
            return invalid("users", "at most 50 users and 50 roles");
        }
        if !self.trigger.persists() && self.after_s != 0 {
            return invalid(
                "after_s",
                "only obstruction, left_open and link_down wait for a condition to persist",
            );
        }
        if self.after_s > MAX_AFTER_S {
            return invalid("after_s", "at most 604800 (a week)");
        }
        if !self.trigger.has_site() && self.site.is_some() {
            return invalid("site", "a login lockout concerns no site");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: Uuid,
    pub trigger: Trigger,
    pub site: Option<SiteId>,
    pub after_s: u64,
    pub users: Vec<UserId>,
    pub roles: Vec<Role>,
    pub created_at_ms: u64,
}

impl Rule {
    pub fn new(id: Uuid, draft: RuleDraft, now_ms: u64) -> Rule {
        let mut users = draft.users;
        users.sort();
        users.dedup();
        let mut roles = draft.roles;
        roles.sort_by_key(|r| r.as_str());
        roles.dedup();
        Rule {
            id,
            trigger: draft.trigger,
            site: draft.site,
            after_s: draft.after_s,
            users,
            roles,
            created_at_ms: now_ms,
        }
    }

    /// Whether this rule covers an alert of `trigger` at `site`.
    pub fn covers(&self, trigger: Trigger, site: Option<&SiteId>) -> bool {
        self.trigger == trigger && self.site.as_ref().is_none_or(|s| Some(s) == site)
    }
}

/// The addresses a rule reaches: its users and every user of its roles, enabled and with an
/// address, once each.
pub fn recipients<'a>(rule: &Rule, users: &'a [UserRecord]) -> Vec<&'a str> {
    let mut out: Vec<&str> = users
        .iter()
        .filter(|u| !u.disabled && (rule.users.contains(&u.id) || rule.roles.contains(&u.role)))
        .filter_map(|u| u.email.as_deref())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Checks an email address the way a mail server will read it: `local@domain`, no spaces or
/// angle brackets, a domain of dot-separated labels. (lettre parses it again before sending;
/// this is the check that answers the person typing it.)
pub fn validate_address(raw: &str) -> Result<(), &'static str> {
    if raw.len() > MAX_ADDRESS {
        return Err("an address is at most 254 characters");
    }
    let Some((local, domain)) = raw.rsplit_once('@') else {
        return Err("an address is local@domain");
    };
    if local.is_empty() || local.len() > 64 {
        return Err("the part before @ is 1 to 64 characters");
    }
    let bad = |c: char| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"@".contains(c);
    if local.chars().any(bad) || local.starts_with('.') || local.ends_with('.') {
        return Err("the part before @ has a character that needs quoting");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err("the domain is dot-separated labels of letters, digits and hyphens");
    }
    Ok(())
}

/// Something to tell people about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub trigger: Trigger,
    pub site: Option<SiteId>,
    /// What it is about, for people: "gate n1 (North entrance)".
    pub subject: String,
    /// What it is about, for dedupe: "gate:n1".
    pub key: String,
    /// When it happened (wall clock).
    pub at_ms: u64,
    /// Facts, in order, for the body.
    pub facts: Vec<(String, String)>,
    /// A path under the public URL to look at it (the console).
    pub path: Option<String>,
}

impl Alert {
    /// One flapping gate sends one message per recipient per window: same trigger, same
    /// subject.
    pub fn dedupe_key(&self) -> String {
        format!("{}:{}", self.trigger.as_str(), self.key)
    }
}

/// A message as rendered, before it is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The message for `alert`; links start at `public_url` (none configured: no link).
pub fn render(alert: &Alert, public_url: Option<&str>) -> Rendered {
    // Header values must not carry line breaks (they would start new headers).
    let one_line = |s: &str| s.replace(['\r', '\n'], " ");
    let subject = one_line(&format!(
        "[Gatehouse] {}: {}",
        alert.trigger.title(),
        alert.subject
    ));
    let link = match (public_url, &alert.path) {
        (Some(base), Some(path)) => Some(format!("{}{}", base.trim_end_matches('/'), path)),
        _ => None,
    };
    let mut text = format!("{} — {}\n\n", alert.trigger.title(), alert.subject);
    text.push_str(&format!("When: {}\n", utc(alert.at_ms)));
    for (k, v) in &alert.facts {
        text.push_str(&format!("{k}: {v}\n"));
    }
    if let Some(link) = &link {
        text.push_str(&format!("\nOpen: {link}\n"));
    }
    text.push_str("\n-- \nSent by Gatehouse because a notification rule names you.\n");

    let mut html = String::from("<!doctype html><html><body style=\"font-family:sans-serif\">\n");
    html.push_str(&format!(
        "<h2>{} — {}</h2>\n<table>\n<tr><th align=\"left\">When</th><td>{}</td></tr>\n",
        escape_html(alert.trigger.title()),
        escape_html(&alert.subject),
        escape_html(&utc(alert.at_ms))
    ));
    for (k, v) in &alert.facts {
        html.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>\n",
            escape_html(k),
            escape_html(v)
        ));
    }
    html.push_str("</table>\n");
    if let Some(link) = &link {
        html.push_str(&format!(
            "<p><a href=\"{}\">Open in Gatehouse</a></p>\n",
            escape_html(link)
        ));
    }
    html.push_str(
        "<p style=\"color:#666\">Sent by Gatehouse because a notification rule names you.</p>\n</body></html>\n",
    );
    Rendered {
        subject,
        text,
        html,
    }
}

/// The path under the public URL where the console takes a link of `purpose` with `token`:
/// the secret rides in the fragment, which browsers never send to a server (nor to proxies'
/// logs, nor in a `Referer`).
pub fn link_path(purpose: LinkPurpose, token: &str) -> String {
    let name = match purpose {
        LinkPurpose::Invitation => "invitation",
        LinkPurpose::PasswordReset => "password-reset",
    };
    format!("/console#{name}={token}")
}

/// The mail carrying an account link (`url`, absolute) for `username`, good until
/// `expires_at_ms`.
pub fn render_link(
    purpose: LinkPurpose,
    username: &str,
    url: &str,
    expires_at_ms: u64,
) -> Rendered {
    let (subject, lead, button, why) = match purpose {
        LinkPurpose::Invitation => (
            "[Gatehouse] You are invited",
            format!(
                "An administrator made you a Gatehouse account, {username:?}. Choose your password to start:"
            ),
            "Choose a password",
            "Sent by Gatehouse because an administrator invited you. If this is unexpected, ignore it: nothing happens until the link is used.",
        ),
        LinkPurpose::PasswordReset => (
            "[Gatehouse] Reset your password",
            format!(
                "Someone asked to reset the password of the Gatehouse account {username:?}. To choose a new one:"
            ),
            "Choose a new password",
            "Sent by Gatehouse because a password reset was asked for. If it was not you, ignore it: your password stays as it is.",
        ),
    };
    let until = utc(expires_at_ms);
    let text = format!("{lead}\n\n{url}\n\nThe link works once, until {until}.\n\n-- \n{why}\n");
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\n<p>{}</p>\n\
         <p><a href=\"{}\">{}</a></p>\n<p>The link works once, until {}.</p>\n\
         <p style=\"color:#666\">{}</p>\n</body></html>\n",
        escape_html(&lead),
        escape_html(url),
        escape_html(button),
        escape_html(&until),
        escape_html(why)
    );
    Rendered {
        subject: subject.to_owned(),
        text,
        html,
    }
}

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailStatus {
    Pending,
    Sent,
    /// Refused for good by the server, or undeliverable for [`MAX_AGE_MS`].
    Failed,
}

impl MailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MailStatus::Pending => "pending",
            MailStatus::Sent => "sent",
            MailStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<MailStatus> {
        match s {
            "pending" => Some(MailStatus::Pending),
            "sent" => Some(MailStatus::Sent),
            "failed" => Some(MailStatus::Failed),
            _ => None,
        }
    }
}

/// One message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub id: Uuid,
    pub dedupe_key: String,
    pub recipient: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub created_at_ms: u64,
    pub status: MailStatus,
    pub attempts: u32,
    pub next_attempt_at_ms: u64,
    pub sent_at_ms: Option<u64>,
    pub last_error: Option<String>,
}

impl Mail {
    /// A new pending message of `rendered` to `recipient`, due at once.
    pub fn new(dedupe_key: String, recipient: &str, rendered: &Rendered, now_ms: u64) -> Mail {
        Mail {
            id: Uuid::new_v4(),
            dedupe_key,
            recipient: recipient.to_owned(),
            subject: rendered.subject.clone(),
            text: rendered.text.clone(),
            html: rendered.html.clone(),
            created_at_ms: now_ms,
            status: MailStatus::Pending,
            attempts: 0,
            next_attempt_at_ms: now_ms,
            sent_at_ms: None,
            last_error: None,
        }
    }
}

/// How long after the `attempts`-th failed attempt the next one is made (before jitter): from
/// `first_ms` (normally [`FIRST_RETRY_MS`]) doubling up to [`MAX_RETRY_DELAY_MS`].
pub fn retry_delay(first_ms: u64, attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16);
    first_ms
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_DELAY_MS.max(first_ms))
}

/// Why a message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The server is away or said "try later" (4xx): retried.
    #[error("{0}")]
    Transient(String),
    /// The server refused this message for good (5xx: no such mailbox, say): not retried.
    #[error("{0}")]
    Permanent(String),
}

/// How long a claimed message is kept from other notifiers: longer than any mailer takes to
/// give up on one message (SMTP: 15 s), short enough that a notifier that died mid-send
/// delays it by a minute.
pub const CLAIM_MS: u64 = 60_000;

/// Sends one message (SMTP, or the file outbox).
pub trait Mailer: Send + Sync + 'static {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), MailError>>;
    /// For logs and `/readyz`: where mail goes (no secrets).
    fn describe(&self) -> String;
}

/// Which messages to list: newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailQuery {
    pub status: Option<MailStatus>,
    pub before: Option<Uuid>,
    pub limit: usize,
}

/// Durable rules and outbox.
pub trait NotifyStore: Send + Sync + 'static {
    fn rules(&self) -> BoxFuture<'_, Result<Vec<Rule>, StoreError>>;
    /// `Rejected` when its site or a user does not exist.
    fn put_rule(&self, rule: Rule) -> BoxFuture<'_, Result<(), StoreError>>;
    fn delete_rule(&self, id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Queues `mails` in one transaction, except those whose dedupe key and recipient were
    /// queued within `window_ms` before `now_ms`; answers how many were queued.
    fn enqueue(
        &self,
        mails: Vec<Mail>,
        window_ms: u64,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// Pending messages due by `now_ms`, oldest first.
    fn due(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Mail>, StoreError>>;
    /// Claims pending message `id` for one delivery attempt: if it is still pending and due
    /// at `now_ms`, its next attempt moves to `until_ms`, so that no other notifier (another
    /// node of a cluster) sends it meanwhile. Answers whether this caller got it. Recording
    /// the attempt ([`attempted`](Self::attempted)) ends the claim; a notifier that dies
    /// mid-send leaves the message to be tried again at `until_ms`.
    fn claim(
        &self,
        id: Uuid,
        now_ms: u64,
        until_ms: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Records an attempt's result: the message as it now is (status, attempts, times,
    /// error).
    fn attempted(&self, mail: Mail) -> BoxFuture<'_, Result<(), StoreError>>;
    fn mails(&self, query: MailQuery) -> BoxFuture<'_, Result<Vec<Mail>, StoreError>>;
    /// Pending messages, counted.
    fn pending(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, role: Role, email: Option<&str>, disabled: bool) -> UserRecord {
        UserRecord {
            id: UserId(Uuid::new_v4()),
            username: name.into(),
            password_hash: String::new(),
            role,
            created_at_ms: 0,
            disabled,
            email: email.map(str::to_owned),
        }
    }

    #[test]
    fn a_rule_reaches_its_users_and_roles_once_each_if_they_have_an_address() {
        let users = vec![
            user("ann", Role::Operator, Some("ann@example.org"), false),
            user("bob", Role::Operator, None, false),
            user("cid", Role::Admin, Some("cid@example.org"), false),
            user("dan", Role::Operator, Some("dan@example.org"), true),
            user("eve", Role::Viewer, Some("eve@example.org"), false),
        ];
        let rule = Rule::new(
            Uuid::new_v4(),
            RuleDraft {
                trigger: Trigger::Fault,
                site: None,
                after_s: 0,
                users: vec![users[2].id, users[0].id],
                roles: vec![Role::Operator],
            },
            0,
        );
        assert_eq!(
            recipients(&rule, &users),
            ["ann@example.org", "cid@example.org"]
        );
    }

    #[test]
    fn rules_cover_their_trigger_and_site() {
        let north = SiteId::new("north").unwrap();
        let south = SiteId::new("south").unwrap();
        let draft = RuleDraft {
            trigger: Trigger::Fault,
            site: Some(north.clone()),
            after_s: 0,
            users: vec![],
            roles: vec![Role::Operator],
        };
        let rule = Rule::new(Uuid::new_v4(), draft.clone(), 0);
        assert!(rule.covers(Trigger::Fault, Some(&north)));
        assert!(!rule.covers(Trigger::Fault, Some(&south)));
        assert!(!rule.covers(Trigger::LinkDown, Some(&north)));
        let everywhere = Rule::new(
            Uuid::new_v4(),
            RuleDraft {
                site: None,
                ..draft
            },
            0,
        );
        assert!(everywhere.covers(Trigger::Fault, Some(&south)));
    }

    #[test]
    fn rules_that_cannot_mean_anything_are_refused() {
        let ok = RuleDraft {
            trigger: Trigger::Obstruction,
            site: None,
            after_s: 120,
            users: vec![],
            roles: vec![Role::Operator],
        };
        assert_eq!(ok.validate(), Ok(()));
        let field = |d: RuleDraft| d.validate().unwrap_err().field;
        assert_eq!(
            field(RuleDraft {
                roles: vec![],
                ..ok.clone()
            }),
            "users"
        );
        assert_eq!(
            field(RuleDraft {
                trigger: Trigger::Fault,
                ..ok.clone()
            }),
            "after_s"
        );
        assert_eq!(
            field(RuleDraft {
                after_s: MAX_AFTER_S + 1,
                ..ok.clone()
            }),
            "after_s"
        );
        assert_eq!(
            field(RuleDraft {
                trigger: Trigger::LoginLockout,
                after_s: 0,
                site: Some(SiteId::new("north").unwrap()),
                ..ok
            }),
            "site"
        );
    }

    #[test]
    fn addresses_are_checked_as_a_mail_server_reads_them() {
        for good in [
            "ops@example.org",
            "on.call+gates@mail.example.co.uk",
            "a@b.cd",
        ] {
            assert_eq!(validate_address(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "ops",
            "ops@",
            "@example.org",
            "ops@example",
            "o ps@example.org",
            "ops@exa mple.org",
            "ops@-example.org",
            "<ops@example.org>",
            "ops@example..org",
            "a\r\nBcc: x@y.org@example.org",
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
        assert!(validate_address(&format!("{}@example.org", "a".repeat(65))).is_err());
    }

    #[test]
    fn retries_double_from_half_a_minute_up_to_half_an_hour() {
        assert_eq!(retry_delay(FIRST_RETRY_MS, 1), 30_000);
        assert_eq!(retry_delay(FIRST_RETRY_MS, 2), 60_000);
        assert_eq!(retry_delay(FIRST_RETRY_MS, 3), 120_000);
        assert_eq!(retry_delay(FIRST_RETRY_MS, 7), MAX_RETRY_DELAY_MS);
        assert_eq!(retry_delay(FIRST_RETRY_MS, 1_000), MAX_RETRY_DELAY_MS);
        assert_eq!(retry_delay(200, 2), 400);
    }

    #[test]
    fn messages_name_what_happened_escape_html_and_keep_subjects_on_one_line() {
        let alert = Alert {
            trigger: Trigger::Fault,
            site: Some(SiteId::new("north").unwrap()),
            subject: "gate n1 (<North>\r\nBcc: x@y.org)".into(),
            key: "gate:n1".into(),
            at_ms: 1_796_641_867_874,
            facts: vec![("Fault code".into(), "7 & more".into())],
            path: Some("/console/#gate=n1".into()),
        };
        let r = render(&alert, Some("https://gates.example.org/"));
        assert!(!r.subject.contains('\n') && !r.subject.contains('\r'));
        assert!(r.subject.starts_with("[Gatehouse] Gate fault: gate n1"));
        assert!(r.text.contains("Fault code: 7 & more"));
        assert!(
            r.text
                .contains("https://gates.example.org/console/#gate=n1")
        );
        assert!(r.html.contains("7 &amp; more"));
        assert!(r.html.contains("&lt;North&gt;"));
        assert!(!r.html.contains("<North>"));
        assert!(r.text.contains("2026-12-07"), "{}", r.text);
        let without_url = render(&alert, None);
        assert!(!without_url.text.contains("Open:"));
    }
}
