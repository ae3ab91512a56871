//! One connection attempt: a token from the provider, TCP, TLS, the upgrade and
//! `welcome`; on 401 one fresh token and one more try.

use std::sync::Arc;

use futures::StreamExt;
use messenger_core::protocol::ServerFrame;
use messenger_core::{SessionId, UserId};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::auth::{TokenProvider, TokenRequest};
use crate::config::Settings;
use crate::error::ClientError;
use crate::tls::Tls;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection that got its `welcome`.
pub(crate) struct Opened {
    pub ws: Ws,
    pub user_id: UserId,
    pub session_id: SessionId,
}

/// One attempt, token refresh included; bounded by `connect_timeout` per try.
pub(crate) async fn attempt(
    settings: Arc<Settings>,
    provider: Arc<dyn TokenProvider>,
    tls: Tls,
) -> Result<Opened, ClientError> {
    let token = provider
        .token(TokenRequest::Connect)
        .await
        .map_err(ClientError::Token)?;
    match open(&settings, &token, &tls).await {
        Err(ClientError::Auth(status)) => {
            tracing::info!(status, "token refused; asking the provider for a fresh one");
            let fresh = provider
                .token(TokenRequest::Refresh)
                .await
                .map_err(ClientError::Token)?;
            open(&settings, &fresh, &tls).await
        }
        other => other,
    }
}

/// Opens a connection and waits for `welcome`.
async fn open(settings: &Settings, token: &str, tls: &Tls) -> Result<Opened, ClientError> {
    let mut req = request(&settings.url)?;
    let bearer =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::InvalidToken)?;
    req.headers_mut().insert(AUTHORIZATION, bearer);
    let connector = match tls {
        #[cfg(any(feature = "rustls", feature = "native-tls"))]
        Tls::Ready(c) => Some(c.clone()),
        #[cfg(not(any(feature = "rustls", feature = "native-tls")))]
        Tls::None => {
            if settings.url.starts_with("wss://") {
                return Err(ClientError::InvalidUrl(format!(
                    "{}: wss:// needs the `rustls` or `native-tls` feature",
                    settings.url
                )));
            }
            None
        }
    };
    let connect = async {
        #[cfg(any(feature = "rustls", feature = "native-tls"))]
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector);
        #[cfg(not(any(feature = "rustls", feature = "native-tls")))]
        let connecting = {
            let _: Option<()> = connector;
            tokio_tungstenite::connect_async_with_config(req, None, true)
        };
        let (mut ws, _) = connecting.await.map_err(map_ws_error)?;
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    return match ServerFrame::decode(text.as_str()) {
                        Ok(ServerFrame::Welcome {
                            user_id,
                            session_id,
                            ..
                        }) => Ok(Opened {
                            ws,
                            user_id,
                            session_id,
                        }),
                        Ok(other) => Err(ClientError::Protocol(format!(
                            "expected welcome, got {}",
                            other.type_name()
                        ))),
                        Err(e) => Err(ClientError::Protocol(format!("bad welcome: {e}"))),
                    };
                }
                Some(Ok(WsMessage::Close(_))) | None => {
                    return Err(ClientError::Connect("closed before welcome".into()))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(map_ws_error(e)),
            }
        }
    };
    tokio::time::timeout(settings.connect_timeout, connect)
        .await
        .map_err(|_| ClientError::Connect("connect timed out".into()))?
}

/// Checks the URL and builds the upgrade request.
pub(crate) fn request(url: &str) -> Result<tungstenite::handshake::client::Request, ClientError> {
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(ClientError::InvalidUrl(format!(
            "{url}: the scheme must be ws:// or wss://"
        )));
    }
    url.into_client_request()
        .map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))
}

fn map_ws_error(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            if status == 401 || status == 403 {
                ClientError::Auth(status)
            } else {
                ClientError::Http(status)
            }
        }
        tungstenite::Error::Url(e) => ClientError::InvalidUrl(e.to_string()),
        tungstenite::Error::Tls(e) => ClientError::Tls(e.to_string()),
        other => ClientError::Connect(other.to_string()),
    }
}
