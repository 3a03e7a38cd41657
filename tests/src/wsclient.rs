//! A `gatehouse.v1` WebSocket client for tests and benchmarks (tokio-tungstenite, the same
//! library family a Rust client would use; the Python and websocat peers live in
//! `tests/peers/`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

pub const SUBPROTOCOL: &str = "gatehouse.v1";

/// One connection.
pub struct WsClient {
    pub socket: WebSocketStream<TcpStream>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16, String),
    /// The connection dropped without one.
    Dropped,
}

impl WsClient {
    /// Connects to `/api/v1/ws` at `addr`, offering the subprotocol.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<WsClient> {
        Self::connect_with(addr, Some(SUBPROTOCOL)).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        subprotocol: Option<&str>,
    ) -> anyhow::Result<WsClient> {
        let tcp = TcpStream::connect(addr).await?;
        Self::handshake(tcp, addr, subprotocol).await
    }

    /// The handshake over a connection made by the caller (with its own socket options).
    pub async fn handshake(
        tcp: TcpStream,
        addr: SocketAddr,
        subprotocol: Option<&str>,
    ) -> anyhow::Result<WsClient> {
        let mut request = format!("ws://{addr}/api/v1/ws").into_client_request()?;
        if let Some(p) = subprotocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_str(p)?);
        }
        tcp.set_nodelay(true)?;
        // A small read buffer, as a phone would have: tungstenite's default (128 KiB) is
        // zeroed on every read, which would make this client, not the server, the bottleneck
        // of a benchmark with thousands of connections.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (socket, response) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .context("the WebSocket handshake")?;
        if let Some(p) = subprotocol {
            let agreed = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok());
            if agreed != Some(p) {
                bail!("the server agreed to {agreed:?}, not {p}");
            }
        }
        Ok(WsClient { socket })
    }

    /// Connects and authenticates; answers the `auth_ok` frame.
    pub async fn authed(addr: SocketAddr, token: &str) -> anyhow::Result<(WsClient, Value)> {
        let mut c = Self::connect(addr).await?;
        c.send(json!({"type": "auth", "id": "a", "token": token}))
            .await?;
        let ok = c.recv().await?;
        if ok["type"] != "auth_ok" {
            bail!("auth answered {ok}");
        }
        Ok((c, ok))
    }

    pub async fn send(&mut self, frame: Value) -> anyhow::Result<()> {
        self.send_text(frame.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.socket
            .send(Message::Text(Utf8Bytes::from(text)))
            .await?;
        Ok(())
    }

    /// The next JSON frame, within 10 s.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        self.recv_within(Duration::from_secs(10)).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .context("no frame in time")?;
            match next {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("the connection ended"),
            }
        }
    }

    /// Frames until one satisfies `pick`, within `limit`; answers it and what came before.
    pub async fn until(
        &mut self,
        limit: Duration,
        pick: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<(Value, Vec<Value>)> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .recv_within(left)
                .await
                .with_context(|| format!("after {} frames: {before:?}", before.len()))?;
            if pick(&frame) {
                return Ok((frame, before));
            }
            before.push(frame);
        }
    }

    /// Reads until the connection ends (within `limit`); answers how, and the text frames
    /// that came first.
    pub async fn ended(&mut self, limit: Duration) -> anyhow::Result<(Ended, Vec<Value>)> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .with_context(|| format!("still open; frames: {frames:?}"))?;
            match next {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(Some(f)))) => {
                    let code: u16 = match f.code {
                        CloseCode::Library(c) | CloseCode::Bad(c) => c,
                        other => u16::from(other),
                    };
                    return Ok((Ended::Closed(code, f.reason.to_string()), frames));
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Ok((Ended::Dropped, frames));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
