//! Notifications against a real SMTP server (aiosmtpd, `tests/peers/smtp_sink.py`; `.ci/run`
//! installs it in its venv):
//! - in process: a gate fault emails the on-call role through STARTTLS and AUTH, with a
//!   certificate made here and trusted through `ca_file`, once per dedupe window however
//!   often the gate flaps; a login lockout emails the admins;
//! - as processes: with the SMTP server down, mail waits in the outbox (and `/readyz` says
//!   mail is degraded); `gatehouse serve` is killed with SIGKILL; restarted, and with the
//!   server back, the message is delivered once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::notify::Mailer;
use gatehouse_adapters::mail::SmtpMailer;
use gatehouse_runtime::boot::NotifySetup;
use gatehouse_sim::Fault;
use gatehouse_tests::http::{Http, assert_status};
use gatehouse_tests::procs::{
    Proc, Simulator, Stream, add_user_with_email, serve_api, workspace_root,
};
use gatehouse_tests::rig::{Rig, WAIT};
use serde_json::{Value, json};
use uuid::Uuid;

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A certificate authority and a server certificate for `localhost` and 127.0.0.1 signed by
/// it, written to `dir`: (ca.pem, server.pem, server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The SMTP server, listening on `port` with `args`.
fn smtp_sink(port: u16, args: &[&str]) -> Proc {
    let script = workspace_root().join("tests/peers/smtp_sink.py");
    let mut sink = Proc::spawn(
        "smtp_sink",
        Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string()])
            .args(args),
    );
    sink.wait_for(Stream::Out, "LISTENING", 1);
    sink
}

/// Waits (bounded, without blocking the runtime's threads) until `sink` has printed `n`
/// lines holding every needle.
async fn received(sink: &Proc, needles: &[&str], n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if sink.count(Stream::Out, needles) >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never received {n} × {needles:?}:\n{}",
            sink.transcript()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_emails_the_on_call_role_once_per_window_over_starttls_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let port = free_port();
    let sink = smtp_sink(
        port,
        &[
            "--starttls",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "--auth",
            "gatehouse:s3cret/pass",
        ],
    );
    let mailer = SmtpMailer::new(
        &format!("smtp://gatehouse:s3cret%2Fpass@localhost:{port}"),
        "Gatehouse <gatehouse@stack.test>",
        Some(&ca),
    )
    .expect("the mail configuration");
    let rig = Rig::start_notifying(NotifySetup {
        mailer: Arc::new(mailer) as Arc<dyn Mailer>,
        public_url: Some("https://gates.example.test".into()),
        dedupe_window: Duration::from_secs(600),
        first_retry: Duration::from_millis(200),
    })
    .await;
    let http = Http::new(rig.stack.addr, WAIT);
    let admin = rig.stack.token("admin");
    let op = rig.stack.token("op");
    let rule = http
        .post(
            &admin,
            "/api/v1/notifications/rules",
            json!({ "trigger": "fault", "roles": ["operator"] }),
        )
        .await;
    assert_status(&rule, 201);
    let lockouts = http
        .post(
            &admin,
            "/api/v1/notifications/rules",
            json!({ "trigger": "login_lockout", "users": [rig.stack.users["admin"].0 .0] }),
        )
        .await;
    assert_status(&lockouts, 201);

    // The motor of n1 trips, is reset, trips again: two faults, one message.
    let north = rig.farm.controller("north").unwrap();
    for round in 0..2 {
        north
            .inject(Fault::MotorFault { unit: 1, code: 7 })
            .await
            .unwrap();
        http.until(&op, "/api/v1/gates/n1", "n1 in fault", |g| {
            (g["state"] == "fault").then_some(())
        })
        .await;
        if round == 0 {
            received(&sink, &["RECEIVED", "to=op@stack.test", "gate n1"], 1).await;
        }
        let reset = http.command(&op, "n1", Uuid::new_v4(), "reset", true).await;
        assert_eq!(reset.body["status"], "completed", "{reset:?}");
        // The reset is a 500 ms coil pulse; a second one written while the first is still
        // on would be no edge at all (see ARCHITECTURE.md, known gaps).
        let deadline = tokio::time::Instant::now() + WAIT;
        while north.coil(1, 3) != Some(false) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reset pulse never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Then n2: its message comes after n1's second fault went through the notifier (one
    // queue, in order), so by then a second n1 message would have been queued.
    north
        .inject(Fault::MotorFault { unit: 2, code: 9 })
        .await
        .unwrap();
    received(&sink, &["RECEIVED", "to=op@stack.test", "gate n2"], 1).await;
    assert_eq!(
        sink.count(Stream::Out, &["RECEIVED", "gate n1"]),
        1,
        "one message per window for a flapping gate:\n{}",
        sink.transcript()
    );
    // Over TLS, authenticated, to the operator only (the rule names the role).
    let lines: Vec<String> = sink
        .lines(Stream::Out)
        .into_iter()
        .filter(|l| l.starts_with("RECEIVED"))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l.contains("tls=1") && l.contains("auth=1")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| l.contains("to=op@stack.test")),
        "{lines:?}"
    );
    let n1 = lines.iter().find(|l| l.contains("gate n1")).unwrap();
    assert!(n1.contains("[Gatehouse] Gate fault: gate n1"), "{n1}");

    // The outbox says what was sent.
    let outbox = http
        .get(&op, "/api/v1/notifications/outbox?status=sent")
        .await;
    assert_status(&outbox, 200);
    assert_eq!(outbox.body["messages"].as_array().unwrap().len(), 2);

    // Failed logins until the account locks: the admin hears of it once.
    for _ in 0..8 {
        http.login("op", "wrong password").await;
    }
    received(
        &sink,
        &["RECEIVED", "to=admin@stack.test", "Login locked out"],
        1,
    )
    .await;
    assert_eq!(
        sink.count(Stream::Out, &["RECEIVED", "Login locked out"]),
        1,
        "{}",
        sink.transcript()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_and_addresses_are_refused_by_field() {
    let rig = Rig::start().await;
    let http = Http::new(rig.stack.addr, WAIT);
    let admin = rig.stack.token("admin");
    let op = rig.stack.token("op");
    for (body, field) in [
        (
            json!({ "trigger": "earthquake", "roles": ["operator"] }),
            "trigger",
        ),
        (json!({ "trigger": "fault" }), "users"),
        (json!({ "trigger": "fault", "roles": ["janitor"] }), "roles"),
        (
            json!({ "trigger": "fault", "after_s": 60, "roles": ["operator"] }),
            "after_s",
        ),
        (
            json!({ "trigger": "login_lockout", "site": "north", "roles": ["admin"] }),
            "site",
        ),
    ] {
        let reply = http
            .post(&admin, "/api/v1/notifications/rules", body.clone())
            .await;
        let error = gatehouse_tests::http::assert_error(&reply, 422, "invalid_rule");
        assert_eq!(error["details"]["field"], field, "{body}");
    }
    let stranger = http
        .post(
            &admin,
            "/api/v1/notifications/rules",
            json!({ "trigger": "fault", "users": [Uuid::new_v4()] }),
        )
        .await;
    gatehouse_tests::http::assert_error(&stranger, 422, "invalid_rule");
    let nowhere = http
        .post(
            &admin,
            "/api/v1/notifications/rules",
            json!({ "trigger": "fault", "site": "east", "roles": ["operator"] }),
        )
        .await;
    gatehouse_tests::http::assert_error(&nowhere, 422, "invalid_rule");
    // Rules are the admin's; operators read the outbox.
    let denied = http
        .post(
            &op,
            "/api/v1/notifications/rules",
            json!({ "trigger": "fault", "roles": ["operator"] }),
        )
        .await;
    gatehouse_tests::http::assert_error(&denied, 403, "forbidden");
    assert_status(&http.get(&op, "/api/v1/notifications/outbox").await, 200);
    let view = rig.stack.token("view");
    gatehouse_tests::http::assert_error(
        &http.get(&view, "/api/v1/notifications/outbox").await,
        403,
        "forbidden",
    );

    // Addresses: checked, trimmed, removable.
    let user = rig.stack.users["res"].0;
    for bad in [
        "res",
        "res@",
        "res@localhost",
        "<res@example.org>",
        "a b@example.org",
    ] {
        let reply = http
            .patch(
                &admin,
                &format!("/api/v1/users/{user}"),
                json!({ "email": bad }),
            )
            .await;
        let error = gatehouse_tests::http::assert_error(&reply, 422, "invalid_email");
        assert_eq!(error["details"]["field"], "email");
    }
    let set = http
        .patch(
            &admin,
            &format!("/api/v1/users/{user}"),
            json!({ "email": " res@example.org " }),
        )
        .await;
    assert_status(&set, 200);
    assert_eq!(set.body["email"], "res@example.org");
    let cleared = http
        .patch(
            &admin,
            &format!("/api/v1/users/{user}"),
            json!({ "email": "" }),
        )
        .await;
    assert_eq!(cleared.body["email"], Value::Null);

    // Invitations: a password or `invite`, an address to mail, and a public URL to link to.
    for (body, code) in [
        (
            json!({ "username": "inv1", "role": "viewer", "email": "inv1@example.org" }),
            "invalid_body",
        ),
        (
            json!({ "username": "inv2", "role": "viewer", "invite": true, "password": "long enough password" }),
            "invalid_body",
        ),
        (
            json!({ "username": "inv3", "role": "viewer", "invite": true }),
            "email_required",
        ),
    ] {
        let reply = http.post(&admin, "/api/v1/users", body.clone()).await;
        gatehouse_tests::http::assert_error(&reply, 422, code);
    }
    // This stack has no public URL: nothing is mailed, and the API says why.
    let invite = http
        .post(
            &admin,
            "/api/v1/users",
            json!({ "username": "inv4", "role": "viewer", "invite": true, "email": "inv4@example.org" }),
        )
        .await;
    gatehouse_tests::http::assert_error(&invite, 503, "public_url_missing");
    let reset = http
        .post_anonymous("/api/v1/auth/password-reset", json!({ "login": "res" }))
        .await;
    gatehouse_tests::http::assert_error(&reset, 503, "public_url_missing");
    let resend = http
        .post(
            &admin,
            &format!("/api/v1/users/{user}/invitation"),
            json!({}),
        )
        .await;
    gatehouse_tests::http::assert_error(&resend, 422, "email_required");
    for body in [json!({ "login": "" }), json!({ "login": "x".repeat(300) })] {
        let reply = http
            .post_anonymous("/api/v1/auth/password-reset", body)
            .await;
        gatehouse_tests::http::assert_error(&reply, 422, "invalid_login");
    }
    for token in ["", "not a token!", "AAAA"] {
        let reply = http
            .post_anonymous(
                "/api/v1/auth/links/redeem",
                json!({ "token": token, "password": "long enough password" }),
            )
            .await;
        gatehouse_tests::http::assert_error(&reply, 410, "link_invalid");
    }
    rig.stop().await;
}

/// The secret of the newest console link mailed to `to` for `kind` (`invitation`,
/// `password-reset`), waiting (bounded) for the `n`th such mail.
async fn mailed_link(sink: &Proc, to: &str, kind: &str, n: usize) -> String {
    let needle = format!("/console#{kind}=");
    let to = format!("to={to}");
    received(sink, &["LINK", to.as_str(), needle.as_str()], n).await;
    let line = sink
        .lines(Stream::Out)
        .into_iter()
        .filter(|l| l.starts_with("LINK") && l.contains(&to) && l.contains(&needle))
        .nth(n - 1)
        .unwrap();
    let url = line.rsplit(' ').next().unwrap();
    assert!(
        url.starts_with("https://gates.example.test/console#"),
        "links start at the public URL: {line}"
    );
    url.split_once(&needle).unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_and_password_resets_arrive_by_mail_and_work_once() {
    let port = free_port();
    let sink = smtp_sink(port, &[]);
    let mailer = SmtpMailer::new(
        &format!("smtp://localhost:{port}?tls=none"),
        "Gatehouse <gatehouse@stack.test>",
        None,
    )
    .expect("the mail configuration");
    let rig = Rig::start_notifying(NotifySetup {
        mailer: Arc::new(mailer) as Arc<dyn Mailer>,
        public_url: Some("https://gates.example.test/".into()),
        dedupe_window: Duration::from_secs(600),
        first_retry: Duration::from_millis(200),
    })
    .await;
    let http = Http::new(rig.stack.addr, WAIT);
    let admin = rig.stack.token("admin");

    // An invited user exists at once, without a password: nothing logs in as it yet.
    let created = http
        .post(
            &admin,
            "/api/v1/users",
            json!({ "username": "newbie", "role": "resident", "email": "newbie@stack.test", "invite": true }),
        )
        .await;
    assert_status(&created, 201);
    assert_eq!(created.body["password_set"], false, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_status(&http.login("newbie", "").await, 401);
    assert_status(&http.login("newbie", "!").await, 401);

    let invitation = mailed_link(&sink, "newbie@stack.test", "invitation", 1).await;
    assert!(
        sink.count(
            Stream::Out,
            &["RECEIVED", "to=newbie@stack.test", "You are invited"]
        ) == 1,
        "{}",
        sink.transcript()
    );
    let seen = http
        .post_anonymous("/api/v1/auth/links/inspect", json!({ "token": invitation }))
        .await;
    assert_status(&seen, 200);
    assert_eq!(seen.body["purpose"], "invitation");
    assert_eq!(seen.body["username"], "newbie");

    // A weak password is refused and leaves the link usable.
    let weak = http
        .post_anonymous(
            "/api/v1/auth/links/redeem",
            json!({ "token": invitation, "password": "short" }),
        )
        .await;
    gatehouse_tests::http::assert_error(&weak, 422, "weak_password");
    let accepted = http
        .post_anonymous(
            "/api/v1/auth/links/redeem",
            json!({ "token": invitation, "password": "first-password-of-newbie" }),
        )
        .await;
    assert_status(&accepted, 200);
    assert_eq!(accepted.body["user"]["username"], "newbie");
    let me = http
        .get(
            accepted.body["access_token"].as_str().unwrap(),
            "/api/v1/auth/me",
        )
        .await;
    assert_eq!(me.body["username"], "newbie", "signed in by the link");
    // Once only, whichever way it is asked.
    for (path, body) in [
        ("/api/v1/auth/links/inspect", json!({ "token": invitation })),
        (
            "/api/v1/auth/links/redeem",
            json!({ "token": invitation, "password": "second-password-of-newbie" }),
        ),
    ] {
        let again = http.post_anonymous(path, body).await;
        gatehouse_tests::http::assert_error(&again, 410, "link_invalid");
    }
    let session = http.login("newbie", "first-password-of-newbie").await;
    assert_status(&session, 200);
    let listed = http.get(&admin, &format!("/api/v1/users/{id}")).await;
    assert_eq!(listed.body["password_set"], true);

    // Self-service reset by address (any case); an unknown login gets the same answer and
    // no mail.
    for login in ["NewBie@Stack.Test", "nobody-here", "ghost@stack.test"] {
        let asked = http
            .post_anonymous("/api/v1/auth/password-reset", json!({ "login": login }))
            .await;
        assert_status(&asked, 202);
        assert_eq!(asked.body, json!({ "status": "accepted" }), "{login}");
    }
    let first_reset = mailed_link(&sink, "newbie@stack.test", "password-reset", 1).await;
    // An admin sends another: the first stops working, only the newest does.
    let sent = http
        .post(&admin, &format!("/api/v1/users/{id}/invitation"), json!({}))
        .await;
    assert_status(&sent, 202);
    assert_eq!(
        sent.body["purpose"], "password_reset",
        "the user has a password"
    );
    let reset = mailed_link(&sink, "newbie@stack.test", "password-reset", 2).await;
    assert_ne!(reset, first_reset);
    let replaced = http
        .post_anonymous(
            "/api/v1/auth/links/inspect",
            json!({ "token": first_reset }),
        )
        .await;
    gatehouse_tests::http::assert_error(&replaced, 410, "link_invalid");
    let done = http
        .post_anonymous(
            "/api/v1/auth/links/redeem",
            json!({ "token": reset, "password": "second-password-of-newbie" }),
        )
        .await;
    assert_status(&done, 200);
    // The old password and the sessions it opened are over.
    assert_status(&http.login("newbie", "first-password-of-newbie").await, 401);
    let old_refresh = http
        .post_anonymous(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": session.body["refresh_token"] }),
        )
        .await;
    assert_status(&old_refresh, 401);
    assert_status(
        &http.login("newbie", "second-password-of-newbie").await,
        200,
    );
    // Nobody else got mail, and no mail went to the ghost.
    assert_eq!(
        sink.count(Stream::Out, &["RECEIVED"]),
        3,
        "{}",
        sink.transcript()
    );

    // Asking again and again for one account is held back (3 per 10 minutes).
    let mut limited = None;
    for _ in 0..4 {
        let asked = http
            .post_anonymous(
                "/api/v1/auth/password-reset",
                json!({ "login": "newbie@stack.test" }),
            )
            .await;
        if asked.status == 429 {
            limited = Some(asked);
            break;
        }
        assert_status(&asked, 202);
    }
    let limited = limited.expect("a flood of reset requests is limited");
    gatehouse_tests::http::assert_error(&limited, 429, "rate_limited");

    // The audit log tells who did what.
    let audit = http.get(&admin, "/api/v1/audit?limit=200").await;
    let actions: Vec<&str> = audit.body["records"]
        .as_array()
        .unwrap_or_else(|| panic!("{:?}", audit.body))
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "auth.invitation_accepted",
        "auth.password_reset_requested",
        "user.password_link",
        "auth.password_reset",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    rig.stop().await;
}

/// A user whose password is `<name>-password-1`, with an address.
fn add_user(dir: &Path, config: &Path, name: &str, role: &str, email: &str) {
    let password = format!("{name}-password-1");
    add_user_with_email(dir, config, name, role, &password, Some(email));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_out_an_smtp_outage_and_a_killed_runtime_and_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::spawn(1, 1, 300);
    let port = free_port();
    std::fs::write(dir.path().join("fleet.toml"), sim.fleet_file(1)).unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://gates.example.test\"\n\n\
             [data]\ndir = {:?}\n\n[fleet]\nfile = \"fleet.toml\"\n\n\
             [mail]\nsmtp_url = \"smtp://127.0.0.1:{port}?tls=none\"\n\
             from = \"gatehouse@example.test\"\nfirst_retry_s = 1\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    add_user(dir.path(), &config, "chief", "admin", "chief@example.test");
    add_user(
        dir.path(),
        &config,
        "oncall",
        "operator",
        "oncall@example.test",
    );

    let (mut first, addr) = serve_api(dir.path(), &config);
    let http = Http::new(addr, WAIT);
    let admin = {
        let reply = http.login("chief", "chief-password-1").await;
        reply.body["access_token"].as_str().unwrap().to_owned()
    };
    http.live_gates(&admin, &["sim-1-g1"]).await;
    let rule = http
        .post(
            &admin,
            "/api/v1/notifications/rules",
            json!({ "trigger": "fault", "roles": ["operator"] }),
        )
        .await;
    assert_status(&rule, 201);

    // The fault happens while the mail server is down: the message waits, tried and failing.
    sim.control("fault sim-1 1 7");
    let waiting = http
        .until(
            &admin,
            "/api/v1/notifications/outbox?status=pending",
            "a message tried and waiting",
            |b| {
                let m = b["messages"].as_array()?.first()?.clone();
                (m["attempts"].as_u64()? >= 1).then_some(m)
            },
        )
        .await;
    assert_eq!(waiting["recipient"], "oncall@example.test");
    assert!(waiting["last_error"].is_string(), "{waiting}");
    let ready = http.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "mail is optional: degraded, not down");
    let mail_check = ready.body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mail")
        .cloned()
        .unwrap();
    assert!(mail_check["degraded"].is_string(), "{mail_check}");
    assert_eq!(ready.body["status"], "degraded", "{:?}", ready.body);

    // The runtime dies without a word; the mail server comes back; the runtime restarts.
    first.signal("KILL");
    first.wait_exit(WAIT);
    let sink = smtp_sink(port, &[]);
    let (mut second, addr) = serve_api(dir.path(), &config);
    received(
        &sink,
        &["RECEIVED", "to=oncall@example.test", "Gate fault"],
        1,
    )
    .await;
    let http = Http::new(addr, WAIT);
    let admin = http.login("chief", "chief-password-1").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = http
        .until(
            &admin,
            "/api/v1/notifications/outbox",
            "the message sent",
            |b| {
                let m = b["messages"].as_array()?.first()?.clone();
                (m["status"] == "sent").then_some(m)
            },
        )
        .await;
    assert_eq!(sent["id"], waiting["id"], "the same message, not a new one");
    assert_eq!(
        sink.count(Stream::Out, &["RECEIVED"]),
        1,
        "{}",
        sink.transcript()
    );
    let line = sink
        .lines(Stream::Out)
        .into_iter()
        .find(|l| l.starts_with("RECEIVED"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "id=<{}@gatehouse>",
            waiting["id"].as_str().unwrap()
        )),
        "{line}"
    );
    second.signal("TERM");
    second.wait_exit(WAIT);
}
