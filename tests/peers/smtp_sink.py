"""An SMTP server for the notification tests: aiosmtpd (pinned in .ci/run) that keeps every
message it accepts, as a real mail server would, and says so on stdout.

    python3 smtp_sink.py --port 2525 [--starttls CERT KEY] [--implicit CERT KEY]
                         [--auth USER:PASS] [--dir DIR] [--refuse ADDRESS]

- `--starttls CERT KEY`: offers STARTTLS and requires it before AUTH and MAIL;
- `--implicit CERT KEY`: TLS from the first byte (SMTPS);
- `--auth USER:PASS`: requires AUTH (PLAIN or LOGIN) with these credentials;
- `--dir DIR`: writes each message to DIR/<n>.eml;
- `--refuse ADDRESS`: answers 550 for this recipient (a permanent failure).

Prints `LISTENING <port>` once ready, then `RECEIVED to=<rcpt> tls=<0|1> auth=<0|1> id=<message-id> subject=<...>`
for every message accepted, followed by `LINK to=<rcpt> <url>` for every console link
(`.../console#...`) in its plain-text part, as a mail client would decode it. Runs until
killed.
"""

import argparse
import asyncio
import email
import email.policy
import os
import re
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def tls_context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


class Sink:
    def __init__(self, out_dir, refuse):
        self.out_dir = out_dir
        self.refuse = refuse
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        raw = envelope.content
        if self.out_dir:
            with open(os.path.join(self.out_dir, f"{self.count}.eml"), "wb") as f:
                f.write(raw)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        tls = 1 if session.ssl is not None else 0
        user = 1 if session.authenticated else 0
        for rcpt in envelope.rcpt_tos:
            print(
                f"RECEIVED to={rcpt} tls={tls} auth={user} "
                f"id={message.get('Message-ID', '-')} subject={message.get('Subject', '')}",
                flush=True,
            )
        text = message.get_body(preferencelist=("plain",))
        if text is not None:
            for url in re.findall(r"\S+/console#\S+", text.get_content()):
                for rcpt in envelope.rcpt_tos:
                    print(f"LINK to={rcpt} {url}", flush=True)
        return "250 OK"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--implicit", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--auth")
    p.add_argument("--dir")
    p.add_argument("--refuse")
    args = p.parse_args()

    sink = Sink(args.dir, args.refuse)
    authenticator = None
    if args.auth:
        want_user, want_pass = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == want_user
                and auth_data.password.decode() == want_pass
            )
            return AuthResult(success=ok, handled=False)

    starttls = tls_context(*args.starttls) if args.starttls else None
    implicit = tls_context(*args.implicit) if args.implicit else None

    def factory():
        return SMTP(
            sink,
            hostname="localhost",
            tls_context=starttls,
            require_starttls=starttls is not None,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            # Over implicit TLS the connection is already encrypted.
            auth_require_tls=implicit is None,
        )

    async def serve():
        server = await asyncio.get_running_loop().create_server(
            factory, host="127.0.0.1", port=args.port, ssl=implicit
        )
        print(f"LISTENING {args.port}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
