//! Reports and maintenance attachments end to end, on the local blob store: a report is
//! asked for over REST, generated in the background by the scheduler, followed to `done` and
//! downloaded (CSV parsed back; PDF read by `pdftotext` from poppler-utils, which `.ci/run`
//! installs); attachments are streamed in under their type and size limits and streamed
//! back. (The S3 store is tested against s3s-fs in `blob_s3.rs`; here, monthly reports land in it, and a report waits out an S3 outage and a killed runtime.)

use std::process::Command;

use gatehouse_tests::http::{Http, Reply, assert_error, assert_status};
use gatehouse_tests::rig::{Rig, WAIT};
use serde_json::{Value, json};
use uuid::Uuid;

fn now_ms() -> u64 {
    gatehouse_actors::clock::wall_ms()
}

/// Asks for a report and follows it to `done`; answers its final body.
async fn report(http: &Http, token: &str, request: Value) -> Value {
    let created = http.post(token, "/api/v1/reports", request.clone()).await;
    assert_status(&created, 202);
    assert_eq!(created.body["status"], "queued", "{created:?}");
    let id = created.body["id"].as_str().unwrap().to_owned();
    http.until(
        token,
        &format!("/api/v1/reports/{id}"),
        "the report done",
        |b| {
            assert_ne!(b["status"], "failed", "{b}");
            (b["status"] == "done").then(|| b.clone())
        },
    )
    .await
}

/// GETs a presigned link as anyone would: no credentials, no proxy.
async fn presigned(link: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(link)
        .send()
        .await
        .unwrap()
}

/// GETs `path` as raw bytes (not JSON), with its headers.
async fn raw_get(
    http: &Http,
    token: &str,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(http.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

async fn upload(http: &Http, token: &str, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let request = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(http.url(path))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body);
    gatehouse_tests::http::send(request).await
}

/// Sends a request head declaring a body of `length` bytes, sends none of it, and answers
/// the status line the server gives.
async fn declared_only(addr: std::net::SocketAddr, token: &str, path: &str, length: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/pdf\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The text `pdftotext` reads out of `pdf`; None when poppler-utils is missing outside CI.
fn pdf_text(pdf: &[u8]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.pdf");
    std::fs::write(&path, pdf).unwrap();
    match Command::new("pdftotext").arg(&path).arg("-").output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "pdftotext: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("pdftotext missing (apt-get install poppler-utils): PDF text not checked");
            None
        }
        Err(e) => panic!("pdftotext is needed under CI (.ci/run installs poppler-utils): {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_generated_in_the_background_and_download_as_csv_and_pdf() {
    let rig = Rig::start().await;
    let http = Http::new(rig.stack.addr, WAIT);
    let admin = rig.stack.token("admin");
    let op = rig.stack.token("op");
    let from = now_ms() - 60_000;
    for action in ["open", "close"] {
        let r = http.command(&op, "n1", Uuid::new_v4(), action, true).await;
        assert_eq!(r.body["status"], "completed", "{r:?}");
    }
    let r = http.command(&op, "s1", Uuid::new_v4(), "open", true).await;
    assert_eq!(r.body["status"], "completed", "{r:?}");
    let to = now_ms() + 60_000;

    // The north site's events as CSV: n1's commands are there, s1's (south) are not.
    let done = report(
        &http,
        &admin,
        json!({ "kind": "events", "site": "north", "from_ms": from, "to_ms": to, "format": "csv" }),
    )
    .await;
    assert_eq!(done["progress"], 100);
    assert!(done["rows"].as_u64().unwrap() >= 4, "{done}");
    // Asked where to fetch it: the local store makes no links, the path itself serves it.
    let link = http
        .get(
            &admin,
            &format!("{}?link=true", done["download"].as_str().unwrap()),
        )
        .await;
    assert_status(&link, 200);
    assert_eq!(link.body, json!({ "url": null, "expires_at_ms": null }));
    let (status, headers, body) = raw_get(&http, &admin, done["download"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.contains("gatehouse-events-north-"),
        "{disposition}"
    );
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    let text = String::from_utf8(body).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("time (UTC),gate,seq,event,state,cause,detail")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len() as u64, done["rows"].as_u64().unwrap());
    assert!(
        rows.iter()
            .any(|r| r.contains(",n1,") && r.contains("open completed")),
        "{text}"
    );
    assert!(!rows.iter().any(|r| r.contains(",s1,")), "{text}");

    // The same as PDF, read back by a PDF reader.
    let pdf = report(
        &http,
        &admin,
        json!({ "kind": "events", "site": "north", "from_ms": from, "to_ms": to, "format": "pdf" }),
    )
    .await;
    let (status, headers, body) = raw_get(&http, &admin, pdf["download"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/pdf");
    assert!(body.starts_with(b"%PDF-"));
    if let Some(text) = pdf_text(&body) {
        assert!(text.contains("Gatehouse - gate events"), "{text}");
        assert!(text.contains("command_finished"), "{text}");
        assert!(text.contains("site north"), "{text}");
    }

    // The audit log of the fleet: the commands, with who gave them.
    let audit = report(
        &http,
        &admin,
        json!({ "kind": "audit", "from_ms": from, "to_ms": to, "format": "csv" }),
    )
    .await;
    let (_, _, body) = raw_get(&http, &admin, audit["download"].as_str().unwrap()).await;
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("gate.open") && text.contains("gate:s1"),
        "{text}"
    );

    // Listed newest first.
    let list = http.get(&admin, "/api/v1/reports?limit=2").await;
    assert_status(&list, 200);
    assert_eq!(list.body["reports"][0]["id"], audit["id"]);
    assert!(list.body["next"].is_string());

    // Admins only; bad requests say which field.
    assert_error(
        &http
            .post(
                &op,
                "/api/v1/reports",
                json!({ "kind": "events", "from_ms": 1, "to_ms": 2, "format": "csv" }),
            )
            .await,
        403,
        "forbidden",
    );
    for (body, field) in [
        (
            json!({ "kind": "weather", "from_ms": 1, "to_ms": 2, "format": "csv" }),
            "kind",
        ),
        (
            json!({ "kind": "events", "from_ms": 1, "to_ms": 2, "format": "docx" }),
            "format",
        ),
        (
            json!({ "kind": "events", "from_ms": 5, "to_ms": 5, "format": "csv" }),
            "to_ms",
        ),
        (
            json!({ "kind": "events", "from_ms": 0, "to_ms": 400u64 * 86_400_000, "format": "csv" }),
            "to_ms",
        ),
    ] {
        let e = assert_error(
            &http.post(&admin, "/api/v1/reports", body.clone()).await,
            422,
            "invalid_report",
        );
        assert_eq!(e["details"]["field"], field, "{body}");
    }
    assert_error(
        &http
            .post(&admin, "/api/v1/reports", json!({ "kind": "events", "site": "east", "from_ms": 1, "to_ms": 2, "format": "csv" }))
            .await,
        422,
        "unknown_site",
    );
    assert_error(
        &http
            .get(&admin, &format!("/api/v1/reports/{}", Uuid::new_v4()))
            .await,
        404,
        "unknown_report",
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_stream_in_under_their_limits_and_stream_back() {
    let rig = Rig::start().await;
    let http = Http::new(rig.stack.addr, WAIT);
    let op = rig.stack.token("op");
    let view = rig.stack.token("view");
    let opened = http
        .post(
            &op,
            "/api/v1/maintenance/records",
            json!({ "gate": "n2", "notes": "springs" }),
        )
        .await;
    assert_status(&opened, 201);
    let record = opened.body["record"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/maintenance/records/{record}/attachments");

    // A photo of 1 MiB, streamed in and back byte for byte.
    let photo: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let up = upload(
        &http,
        &op,
        &format!("{path}?name=spring-1.png"),
        "image/png",
        photo.clone(),
    )
    .await;
    assert_status(&up, 201);
    assert_eq!(up.body["size"], photo.len());
    assert_eq!(up.body["content_type"], "image/png");
    let (status, headers, back) =
        raw_get(&http, &view, up.body["download"].as_str().unwrap()).await;
    assert_eq!(status, 200, "viewers read maintenance");
    assert_eq!(headers["content-type"], "image/png");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("spring-1.png")
    );
    assert_eq!(back, photo);
    let record_now = http
        .get(&op, &format!("/api/v1/maintenance/records/{record}"))
        .await;
    assert_eq!(record_now.body["attachments"].as_array().unwrap().len(), 1);

    // Refused: another type, a bad name, a viewer, past the limit (4 MiB in the test
    // stack: just past it, counted by the store; far past it, by its declared length).
    assert_error(
        &upload(
            &http,
            &op,
            &format!("{path}?name=x.exe"),
            "application/x-msdownload",
            vec![1; 10],
        )
        .await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &upload(
            &http,
            &op,
            &format!("{path}?name=../x.png"),
            "image/png",
            vec![1; 10],
        )
        .await,
        400,
        "invalid_query",
    );
    assert_error(
        &upload(
            &http,
            &view,
            &format!("{path}?name=x.png"),
            "image/png",
            vec![1; 10],
        )
        .await,
        403,
        "forbidden",
    );
    let just_over = upload(
        &http,
        &op,
        &format!("{path}?name=big.pdf"),
        "application/pdf",
        vec![0; 4 * 1024 * 1024 + 1],
    )
    .await;
    assert_eq!(just_over.status, 413, "{just_over:?}");
    // Far past it: refused on its declared length, before a byte of the body is read (as
    // raw HTTP: a client that keeps writing a refused body sees the connection close).
    let far_over = declared_only(
        rig.stack.addr,
        &op,
        &format!("{path}?name=big.pdf"),
        6 * 1024 * 1024,
    )
    .await;
    assert!(far_over.starts_with("HTTP/1.1 413"), "{far_over}");
    let record_now = http
        .get(&op, &format!("/api/v1/maintenance/records/{record}"))
        .await;
    assert_eq!(
        record_now.body["attachments"].as_array().unwrap().len(),
        1,
        "nothing refused was attached"
    );
    let blobs = rig
        .stack
        .runtime
        .blobs
        .clone()
        .expect("the stack keeps files");
    let stored = blobs.list("attachments/").await.unwrap();
    assert_eq!(stored.len(), 1, "nothing refused was kept: {stored:?}");
    assert_error(
        &http.get(&op, &format!("{path}/{}", Uuid::new_v4())).await,
        404,
        "unknown_attachment",
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_reports_land_in_the_bucket_and_download_through_presigned_links() {
    let Some(s3) = gatehouse_tests::s3::S3sFs::start() else {
        return;
    };
    let blobs: std::sync::Arc<dyn gatehouse_actors::blob::BlobStore> =
        std::sync::Arc::new(s3.blobs());
    let rig = Rig::start_reporting(blobs.clone()).await;
    let http = Http::new(rig.stack.addr, WAIT);
    let admin = rig.stack.token("admin");

    // Each site's previous month: events as CSV, maintenance as PDF, queued by the scheduler
    // on its own and generated into the bucket.
    let done = http
        .until(
            &admin,
            "/api/v1/reports",
            "four monthly reports done",
            |b| {
                let reports = b["reports"].as_array()?;
                (reports.len() == 4 && reports.iter().all(|r| r["status"] == "done"))
                    .then(|| reports.clone())
            },
        )
        .await;
    assert!(
        done.iter().all(|r| r["requested_by"] == "system"),
        "{done:?}"
    );
    let sites: std::collections::BTreeSet<&str> =
        done.iter().map(|r| r["site"].as_str().unwrap()).collect();
    assert_eq!(sites.into_iter().collect::<Vec<_>>(), ["north", "south"]);
    let in_bucket = blobs.list("reports/").await.unwrap();
    assert_eq!(in_bucket.len(), 4, "{in_bucket:?}");

    // The download is a presigned link to the bucket; the link alone fetches the file.
    let pdf = done.iter().find(|r| r["format"] == "pdf").unwrap();
    let (status, headers, _) = raw_get(&http, &admin, pdf["download"].as_str().unwrap()).await;
    assert_eq!(status, 303);
    let link = headers["location"].to_str().unwrap().to_owned();
    // The same link as JSON, for clients that cannot read a redirect (the console).
    let asked = http
        .get(
            &admin,
            &format!("{}?link=true", pdf["download"].as_str().unwrap()),
        )
        .await;
    assert_status(&asked, 200);
    let as_json = asked.body["url"].as_str().unwrap();
    assert!(
        as_json.starts_with(&s3.endpoint) && as_json.contains("X-Amz-Signature="),
        "{as_json}"
    );
    assert!(asked.body["expires_at_ms"].as_u64().unwrap() > now_ms());
    assert_eq!(presigned(as_json).await.status().as_u16(), 200);
    assert!(
        link.starts_with(&s3.endpoint) && link.contains("X-Amz-Signature="),
        "{link}"
    );
    let fetched = presigned(&link).await;
    assert_eq!(fetched.status().as_u16(), 200);
    let body = fetched.bytes().await.unwrap();
    assert!(body.starts_with(b"%PDF-"));
    if let Some(text) = pdf_text(&body) {
        assert!(text.contains("Gatehouse - maintenance records"), "{text}");
    }
    // Queued once: the next rounds find them.
    let again = http.get(&admin, "/api/v1/reports").await;
    assert_eq!(again.body["reports"].as_array().unwrap().len(), 4);
    rig.stop().await;
}

/// `/readyz` until its `blob_store` check satisfies `done` (bounded); the whole report.
async fn blob_check_until(http: &Http, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = http.call(reqwest::Method::GET, "/readyz", None, None).await;
        assert_eq!(ready.status, 200, "{:?}", ready.body);
        let check = ready.body["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "blob_store"))
            .cloned()
            .unwrap_or_else(|| panic!("no blob_store check: {:?}", ready.body));
        if done(&check) {
            return ready.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the blob_store check never got there: {check}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_waits_out_an_s3_outage_and_a_killed_runtime_and_lands_once_s3_is_back() {
    use gatehouse_tests::procs::{add_user, serve_api};
    use gatehouse_tests::s3::{ACCESS_KEY, BUCKET, S3sFs, SECRET_KEY};
    let Some(mut s3) = S3sFs::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[data]\ndir = {:?}\n\n\
             [storage]\ns3_endpoint = {:?}\ns3_bucket = {BUCKET:?}\ns3_path_style = true\n\
             s3_access_key = {ACCESS_KEY:?}\ns3_secret_key = {SECRET_KEY:?}\n",
            dir.path().join("data").display().to_string(),
            s3.endpoint,
        ),
    )
    .unwrap();
    add_user(dir.path(), &config, "chief", "admin", "chief-password-1");
    let login = |http: Http| async move {
        let reply = http.login("chief", "chief-password-1").await;
        assert_status(&reply, 200);
        (
            http,
            reply.body["access_token"].as_str().unwrap().to_owned(),
        )
    };

    let (mut first, addr) = serve_api(dir.path(), &config);
    let (http, admin) = login(Http::new(addr, WAIT)).await;
    let ready = blob_check_until(&http, |c| {
        c["ready"] == true && c["degraded"].is_null() && c["detail"].is_string()
    })
    .await;
    assert_eq!(ready["status"], "ready", "{ready}");

    // The bucket goes away: /readyz says so (degraded, still serving), and a report asked
    // for meanwhile is tried and put back in the queue, never failed.
    s3.stop();
    let degraded = blob_check_until(&http, |c| c["degraded"].is_string()).await;
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    let now = now_ms();
    let created = http
        .post(
            &admin,
            "/api/v1/reports",
            json!({ "kind": "audit", "from_ms": now - 3_600_000, "to_ms": now + 60_000, "format": "csv" }),
        )
        .await;
    assert_status(&created, 202);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let waiting = http
        .until(
            &admin,
            &format!("/api/v1/reports/{id}"),
            "a failed try",
            |b| {
                assert_ne!(b["status"], "failed", "{b}");
                (b["status"] == "queued" && b["error"].is_string()).then(|| b.clone())
            },
        )
        .await;
    assert_eq!(waiting["download"], Value::Null);

    // The runtime dies without a word; the bucket comes back; the runtime restarts and the
    // report lands, once.
    first.signal("KILL");
    first.wait_exit(WAIT);
    s3.restart();
    let (mut second, addr) = serve_api(dir.path(), &config);
    let (http, admin) = login(Http::new(addr, WAIT)).await;
    let done = http
        .until(
            &admin,
            &format!("/api/v1/reports/{id}"),
            "the report done",
            |b| {
                assert_ne!(b["status"], "failed", "{b}");
                (b["status"] == "done").then(|| b.clone())
            },
        )
        .await;
    let (status, headers, _) = raw_get(&http, &admin, done["download"].as_str().unwrap()).await;
    assert_eq!(status, 303, "a presigned link to the bucket");
    let link = headers["location"].to_str().unwrap().to_owned();
    let fetched = presigned(&link).await;
    assert_eq!(fetched.status().as_u16(), 200);
    let csv = fetched.text().await.unwrap();
    assert!(
        csv.contains("auth.login"),
        "the logins are in the audit: {csv}"
    );
    let stored = gatehouse_actors::blob::BlobStore::list(&s3.blobs(), "reports/")
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    blob_check_until(&http, |c| c["ready"] == true && c["degraded"].is_null()).await;
    second.signal("TERM");
    second.wait_exit(WAIT);
}
