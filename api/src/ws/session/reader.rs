//! The reader task of a session: frames to the actor until the connection ends, with the
//! idle timeout and the per-connection frame-rate limit (GCRA) applied on the way.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ractor::ActorRef;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Socket;
use crate::ratelimit::{Gcra, Quota};
use crate::ws::WsConfig;
use crate::ws::msg::{Inbound, SessionMsg};

/// The reader task: frames to the actor until the connection ends. After a frame that ends
/// the session (too large, too many, idle) it keeps reading and discarding until the client
/// answers the close: closing a TCP connection with unread data in it resets it, and the
/// client would never see the close frame that says why.
pub(super) async fn read(
    mut stream: futures::stream::SplitStream<Socket>,
    me: ActorRef<SessionMsg>,
    config: Arc<WsConfig>,
) {
    let quota = Quota {
        burst: config.frame_burst,
        period: Duration::from_secs(1) / config.frames_per_second.max(1),
    };
    let (mut frames, opened) = (Gcra::default(), Instant::now());
    let mut admit = move || frames.admit(quota, opened.elapsed()).is_ok();
    loop {
        let inbound = match tokio::time::timeout(config.idle_timeout, stream.next()).await {
            Err(_) => Inbound::Idle,
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => Inbound::Closed,
            Ok(Some(Ok(Message::Text(text)))) => match admit() {
                true => Inbound::Text(text),
                false => Inbound::RateLimited,
            },
            Ok(Some(Ok(Message::Binary(_)))) => match admit() {
                true => Inbound::Binary,
                false => Inbound::RateLimited,
            },
            // Control frames keep the connection alive; tungstenite answers pings itself.
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Err(WsError::Capacity(_)))) => Inbound::TooLarge,
            // The stream is unusable after these: the session closes with the RFC's code so
            // that the client can tell its own bug from a goodbye.
            Ok(Some(Err(WsError::Protocol(e)))) => Inbound::ProtocolError(e.to_string()),
            Ok(Some(Err(WsError::Utf8(_)))) => Inbound::InvalidUtf8,
            Ok(Some(Err(_))) => Inbound::Closed,
        };
        let more = matches!(inbound, Inbound::Text(_) | Inbound::Binary);
        let ended = matches!(
            inbound,
            Inbound::Closed | Inbound::ProtocolError(_) | Inbound::InvalidUtf8
        );
        if me.send_message(SessionMsg::Inbound(inbound)).is_err() || ended {
            return;
        }
        if !more {
            // Drain until the client's close (the session's drop bounds this with LINGER).
            while let Some(Ok(frame)) = stream.next().await {
                if matches!(frame, Message::Close(_)) {
                    return;
                }
            }
            return;
        }
    }
}
