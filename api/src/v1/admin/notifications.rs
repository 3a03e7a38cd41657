//! Notification rules (admin) and the mail outbox (admin, operator: what was sent, what
//! waits and why). The rules' meaning is `gatehouse_actors::notify`'s; the notifier applies
//! them.

use std::net::IpAddr;

use gatehouse_actors::access::{Operation, Role, UserId};
use gatehouse_actors::clock::wall_ms;
use gatehouse_actors::ids::SiteId;
use gatehouse_actors::notify::{Mail, MailQuery, MailStatus, Rule, RuleDraft, Trigger};
use gatehouse_actors::store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::http::StatusCode;

use super::{admin, allowed, audit, no_content, unprocessable};
use crate::app::App;
use crate::principal::store_error;
use crate::routing::{Outcome, PathParams, Route};
use crate::{ApiError, client_ip, json};

/// Messages per page, by default and at most.
pub const DEFAULT_MAILS: usize = 50;
pub const MAX_MAILS: usize = 500;

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleBody {
    pub id: String,
    /// fault, obstruction, left_open, link_down, maintenance_due, maintenance_overdue,
    /// login_lockout.
    #[schema(value_type = crate::wire::names::TriggerName)]
    pub trigger: String,
    /// Only this site's alerts (null: every site).
    pub site: Option<String>,
    /// For obstruction, left_open and link_down: how long the condition lasts before it is
    /// told.
    pub after_s: u64,
    pub users: Vec<String>,
    #[schema(value_type = Vec<crate::wire::names::RoleName>)]
    pub roles: Vec<String>,
    pub created_at_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<RuleBody>,
}

/// A rule: who hears about what. At least one user or role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    #[schema(value_type = crate::wire::names::TriggerName)]
    pub trigger: String,
    #[schema(value_type = Option<String>)]
    pub site: Option<SiteId>,
    #[serde(default)]
    #[schema(example = 300)]
    pub after_s: u64,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub users: Vec<uuid::Uuid>,
    #[serde(default)]
    #[schema(value_type = Vec<crate::wire::names::RoleName>)]
    pub roles: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MailBody {
    pub id: String,
    pub recipient: String,
    pub subject: String,
    /// pending, sent or failed.
    pub status: String,
    pub attempts: u32,
    pub created_at_ms: u64,
    /// For a pending message: when it is tried next.
    pub next_attempt_at_ms: Option<u64>,
    pub sent_at_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MailPage {
    /// Newest first.
    pub messages: Vec<MailBody>,
    /// The `before` for the next page, or null when there is nothing more.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MailsQuery {
    /// pending, sent or failed.
    pub status: Option<String>,
    pub before: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

fn rule_body(r: &Rule) -> RuleBody {
    RuleBody {
        id: r.id.to_string(),
        trigger: r.trigger.as_str().to_owned(),
        site: r.site.as_ref().map(|s| s.to_string()),
        after_s: r.after_s,
        users: r.users.iter().map(|u| u.to_string()).collect(),
        roles: r.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        created_at_ms: r.created_at_ms,
    }
}

fn mail_body(m: &Mail) -> MailBody {
    MailBody {
        id: m.id.to_string(),
        recipient: m.recipient.clone(),
        subject: m.subject.clone(),
        status: m.status.as_str().to_owned(),
        attempts: m.attempts,
        created_at_ms: m.created_at_ms,
        next_attempt_at_ms: (m.status == MailStatus::Pending).then_some(m.next_attempt_at_ms),
        sent_at_ms: m.sent_at_ms,
        last_error: m.last_error.clone(),
    }
}

use crate::paging::{Page, invalid_query as bad_query};

#[utoipa::path(
    get,
    path = "/api/v1/notifications/rules",
    tag = "notifications",
    operation_id = "list_notification_rules",
    responses(
        (status = 200, description = "Rules, oldest first", body = RuleList),
        (status = 403, description = "Not an admin"),
    ),
    security(("bearer" = [])),
)]
async fn list_rules(app: App, bearer: Option<String>) -> Outcome {
    admin(&app, bearer).await?;
    let rules = app.notify.rules().await.map_err(store_error)?;
    json::reply(
        StatusCode::OK,
        &RuleList {
            rules: rules.iter().map(rule_body).collect(),
        },
    )
}

#[utoipa::path(
    post,
    path = "/api/v1/notifications/rules",
    tag = "notifications",
    operation_id = "create_notification_rule",
    request_body = CreateRule,
    responses(
        (status = 201, description = "Created", body = RuleBody),
        (status = 403, description = "Not an admin"),
        (status = 422, description = "An unknown trigger, role, user or site; no recipient; a wait on a trigger that has none"),
    ),
    security(("bearer" = [])),
)]
async fn create_rule(app: App, bearer: Option<String>, ip: IpAddr, request: CreateRule) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let field = |field: &'static str, code: &'static str, message: String| {
        unprocessable(code, message).with_details(json!({ "field": field }))
    };
    let trigger = Trigger::parse(&request.trigger).ok_or_else(|| {
        field(
            "trigger",
            "invalid_rule",
            format!(
                "trigger is one of {}",
                Trigger::ALL.map(Trigger::as_str).join(", ")
            ),
        )
    })?;
    let roles = request
        .roles
        .iter()
        .map(|r| {
            r.parse::<Role>()
                .map_err(|e| field("roles", "invalid_rule", format!("roles: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let draft = RuleDraft {
        trigger,
        site: request.site.clone(),
        after_s: request.after_s,
        users: request.users.iter().map(|u| UserId(*u)).collect(),
        roles,
    };
    draft
        .validate()
        .map_err(|e| field(e.field, "invalid_rule", e.to_string()))?;
    let rule = Rule::new(uuid::Uuid::new_v4(), draft, wall_ms());
    app.notify
        .put_rule(rule.clone())
        .await
        .map_err(|e| match e {
            // An unknown site or user, named.
            StoreError::Rejected(why) => unprocessable("invalid_rule", why),
            other => store_error(other),
        })?;
    let body = rule_body(&rule);
    audit(
        &app,
        &caller,
        ip,
        "notification.rule.create",
        format!("rule:{}", rule.id),
        json!({ "trigger": &body.trigger, "site": &body.site, "after_s": body.after_s,
                "users": &body.users, "roles": &body.roles }),
    )
    .await;
    json::reply(StatusCode::CREATED, &body)
}

#[utoipa::path(
    delete,
    path = "/api/v1/notifications/rules/{rule}",
    tag = "notifications",
    operation_id = "delete_notification_rule",
    params(("rule" = String, Path, description = "Rule id (UUID)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin"),
        (status = 404, description = "No such rule"),
    ),
    security(("bearer" = [])),
)]
async fn delete_rule(params: PathParams, app: App, bearer: Option<String>, ip: IpAddr) -> Outcome {
    let caller = admin(&app, bearer).await?;
    let raw = params.get("rule")?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_rule",
            format!("no notification rule {raw}"),
        )
        .with_details(json!({ "rule": raw }))
    };
    let id = raw.parse::<uuid::Uuid>().map_err(|_| unknown())?;
    if !app.notify.delete_rule(id).await.map_err(store_error)? {
        return Err(unknown());
    }
    audit(
        &app,
        &caller,
        ip,
        "notification.rule.delete",
        format!("rule:{id}"),
        json!({}),
    )
    .await;
    no_content()
}

#[utoipa::path(
    get,
    path = "/api/v1/notifications/outbox",
    tag = "notifications",
    operation_id = "list_outbox",
    params(MailsQuery),
    responses(
        (status = 200, description = "Messages, newest first", body = MailPage),
        (status = 400, description = "An unknown status, a bad cursor or limit"),
        (status = 403, description = "Not an admin or operator"),
    ),
    security(("bearer" = [])),
)]
async fn outbox(query: MailsQuery, app: App, bearer: Option<String>) -> Outcome {
    allowed(&app, bearer, Operation::Operate).await?;
    let status = query
        .status
        .as_deref()
        .map(|raw| {
            MailStatus::parse(raw).ok_or_else(|| {
                bad_query(
                    "status",
                    format!("status is pending, sent or failed, not {raw:?}"),
                )
            })
        })
        .transpose()?;
    let page = Page::of(
        query.limit,
        query.before.as_deref(),
        DEFAULT_MAILS,
        MAX_MAILS,
    )?;
    let mails = app
        .notify
        .mails(MailQuery {
            status,
            before: page.before,
            limit: page.fetch(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Rejected(why) => bad_query("before", why),
            other => store_error(other),
        })?;
    let (mails, next) = page.split(mails, |m| m.id.to_string());
    let messages = mails.iter().map(mail_body).collect();
    json::reply(StatusCode::OK, &MailPage { messages, next })
}

pub fn routes(app: &App) -> Vec<Route> {
    let (a, b, c, d) = (app.clone(), app.clone(), app.clone(), app.clone());
    vec![
        Route::new::<__path_list_rules, _>(move |_p| a.caller().then(list_rules)),
        Route::new::<__path_create_rule, _>(move |_p| {
            b.caller()
                .and(client_ip())
                .and(json::body::<CreateRule>())
                .then(create_rule)
        }),
        Route::new::<__path_delete_rule, _>(move |p| {
            p.and(c.caller()).and(client_ip()).then(delete_rule)
        }),
        Route::new::<__path_outbox, _>(move |_p| {
            warp::query::<MailsQuery>().and(d.caller()).then(outbox)
        }),
    ]
}
