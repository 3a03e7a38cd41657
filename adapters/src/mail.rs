//! The `Mailer` port on lettre: SMTP with STARTTLS or implicit TLS (rustls on ring, with
//! extra trust roots from `[mail] ca_file`), or a file outbox (one `.eml` file per message in
//! a directory) when no SMTP server is configured, so `gatehouse demo` shows its emails with
//! nothing installed.
//!
//! `smtp_url` forms (CONTRACTS.md "Configuration"):
//! - `smtps://user:pass@host:465`: implicit TLS;
//! - `smtp://user:pass@host:587`: STARTTLS, required (a server that does not offer it is
//!   refused before any credential is sent);
//! - `smtp://host:25?tls=none`: no TLS at all, only for a relay on this host or a test.
//!
//! Errors: a 5xx answer is the message's own failure (`MailError::Permanent`, not retried);
//! anything else (connection refused, timeout, 4xx, TLS trouble) is `Transient`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_actors::notify::{Mail, MailError, Mailer};
use gatehouse_actors::ports::BoxFuture;
use lettre::message::{Mailbox, MultiPart, header};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How long one SMTP conversation may take.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the mail configuration cannot be used (named by key).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {why}")]
pub struct MailConfigError {
    pub key: &'static str,
    pub why: String,
}

fn config_error(key: &'static str, why: impl Into<String>) -> MailConfigError {
    MailConfigError {
        key,
        why: why.into(),
    }
}

/// The sender's mailbox, checked.
pub fn parse_from(from: &str) -> Result<Mailbox, MailConfigError> {
    from.parse::<Mailbox>()
        .map_err(|e| config_error("mail.from", format!("{from:?} is not an address: {e}")))
}

/// Builds the message (multipart: text and HTML alternatives).
fn message(from: &Mailbox, mail: &Mail) -> Result<Message, MailError> {
    let to = mail
        .recipient
        .parse::<Mailbox>()
        .map_err(|e| MailError::Permanent(format!("recipient {:?}: {e}", mail.recipient)))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.clone())
        // The outbox id: a message retried after an unclear failure keeps its identity, so
        // a receiving system can recognise a duplicate.
        .message_id(Some(format!("<{}@gatehouse>", mail.id)))
        .header(header::Date::new(std::time::SystemTime::now()))
        .multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            mail.html.clone(),
        ))
        .map_err(|e| MailError::Permanent(format!("building the message: {e}")))
}

/// Email through an SMTP server.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `smtp(s)://host:port` without credentials, for logs and readiness.
    target: String,
}

impl SmtpMailer {
    /// From `[mail]`'s `smtp_url`, `from` and optional `ca_file` (PEM, added to the public
    /// roots).
    pub fn new(
        smtp_url: &str,
        from: &str,
        ca_file: Option<&Path>,
    ) -> Result<SmtpMailer, MailConfigError> {
        let url = url::Url::parse(smtp_url)
            .map_err(|e| config_error("mail.smtp_url", format!("not a URL: {e}")))?;
        let implicit = match url.scheme() {
            "smtps" => true,
            "smtp" => false,
            other => {
                return Err(config_error(
                    "mail.smtp_url",
                    format!("scheme {other:?}: use smtp:// (STARTTLS) or smtps:// (TLS)"),
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| config_error("mail.smtp_url", "no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(if implicit { 465 } else { 587 });
        let mut plain = false;
        for (k, v) in url.query_pairs() {
            match (k.as_ref(), v.as_ref()) {
                ("tls", "none") if !implicit => plain = true,
                ("tls", "required") => {}
                _ => {
                    return Err(config_error(
                        "mail.smtp_url",
                        format!("unknown option {k}={v} (only tls=none on smtp://)"),
                    ));
                }
            }
        }
        let tls = if plain {
            Tls::None
        } else {
            let mut builder = TlsParameters::builder(host.clone());
            if let Some(path) = ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    config_error("mail.ca_file", format!("{}: {e}", path.display()))
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    config_error("mail.ca_file", format!("{}: {e}", path.display()))
                })?;
                builder = builder.add_root_certificate(cert);
            }
            let params = builder
                .build_rustls()
                .map_err(|e| config_error("mail.smtp_url", format!("TLS: {e}")))?;
            if implicit {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .tls(tls)
            .timeout(Some(SMTP_TIMEOUT));
        if !url.username().is_empty() {
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    config_error(
                        "mail.smtp_url",
                        "credentials are not valid percent-encoding",
                    )
                })
            };
            let user = decode(url.username())?;
            let pass = decode(url.password().unwrap_or(""))?;
            builder = builder.credentials(Credentials::new(user, pass));
        }
        Ok(SmtpMailer {
            transport: builder.build(),
            from: parse_from(from)?,
            target: format!("{}://{host}:{port}", url.scheme()),
        })
    }
}

/// `%XX` sequences decoded (userinfo in a URL), or none when malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), MailError>> {
        Box::pin(async move {
            let message = message(&self.from, mail)?;
            match self.transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(MailError::Permanent(e.to_string())),
                Err(e) => Err(MailError::Transient(e.to_string())),
            }
        })
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

/// Email as `.eml` files in a directory (the default: no SMTP server configured).
pub struct FileMailer {
    transport: AsyncFileTransport<Tokio1Executor>,
    from: Mailbox,
    dir: PathBuf,
}

impl FileMailer {
    /// Creates `dir` if missing.
    pub fn new(dir: &Path, from: &str) -> Result<FileMailer, MailConfigError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| config_error("data.dir", format!("{}: {e}", dir.display())))?;
        Ok(FileMailer {
            transport: AsyncFileTransport::new(dir),
            from: parse_from(from)?,
            dir: dir.to_owned(),
        })
    }
}

impl Mailer for FileMailer {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), MailError>> {
        Box::pin(async move {
            let message = message(&self.from, mail)?;
            self.transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Transient(format!("{}: {e}", self.dir.display())))
        })
    }

    fn describe(&self) -> String {
        format!("files in {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_choose_tls_and_refuse_what_they_cannot_mean() {
        let ok =
            SmtpMailer::new("smtps://u:p%40ss@mail.example.org", "gh@example.org", None).unwrap();
        assert_eq!(ok.describe(), "smtps://mail.example.org:465");
        let ok = SmtpMailer::new("smtp://mail.example.org", "gh@example.org", None).unwrap();
        assert_eq!(ok.describe(), "smtp://mail.example.org:587");
        let ok = SmtpMailer::new("smtp://127.0.0.1:2525?tls=none", "gh@example.org", None).unwrap();
        assert_eq!(ok.describe(), "smtp://127.0.0.1:2525");
        for (url, key) in [
            ("http://mail.example.org", "mail.smtp_url"),
            ("smtps://mail.example.org?tls=none", "mail.smtp_url"),
            ("smtp://mail.example.org?pool=1", "mail.smtp_url"),
            ("not a url", "mail.smtp_url"),
        ] {
            let e = SmtpMailer::new(url, "gh@example.org", None)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(e.key, key, "{url}");
        }
        let e = SmtpMailer::new("smtp://mail.example.org", "not an address", None)
            .err()
            .unwrap();
        assert_eq!(e.key, "mail.from");
        let e = SmtpMailer::new(
            "smtp://mail.example.org",
            "gh@example.org",
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .err()
        .unwrap();
        assert_eq!(e.key, "mail.ca_file");
    }

    #[test]
    fn percent_encoded_credentials_decode() {
        assert_eq!(percent_decode("p%40ss%2Fw").as_deref(), Some("p@ss/w"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%4"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[tokio::test]
    async fn the_file_outbox_writes_one_message_per_mail() {
        let dir = tempfile::tempdir().unwrap();
        let mailer =
            FileMailer::new(&dir.path().join("outbox"), "Gatehouse <gh@example.org>").unwrap();
        let rendered = gatehouse_actors::notify::Rendered {
            subject: "[Gatehouse] Gate fault: gate n1".into(),
            text: "text body".into(),
            html: "<p>html body</p>".into(),
        };
        let mail = Mail::new("fault:gate:n1".into(), "ops@example.org", &rendered, 0);
        mailer.send(&mail).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("outbox"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let eml = std::fs::read_to_string(&files[0]).unwrap();
        assert!(eml.contains("To: ops@example.org"), "{eml}");
        assert!(
            eml.contains("Subject: [Gatehouse] Gate fault: gate n1"),
            "{eml}"
        );
        assert!(
            eml.contains(&format!("Message-ID: <{}@gatehouse>", mail.id)),
            "{eml}"
        );
        assert!(
            eml.contains("text body") && eml.contains("<p>html body</p>"),
            "{eml}"
        );
        let bad = Mail::new("k".into(), "not an address", &rendered, 0);
        assert!(matches!(
            mailer.send(&bad).await,
            Err(MailError::Permanent(_))
        ));
    }
}
