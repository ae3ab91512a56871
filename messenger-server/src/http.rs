//! The lean HTTP/1.1 layer: read one bounded request head, answer plain responses, and
//! check a WebSocket upgrade request. Separate from the I/O where cheap so it is
//! testable without sockets.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// The parts of a request head the server uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (without `?`), if any.
    pub query: Option<String>,
    /// HTTP minor version (1 for HTTP/1.1).
    pub version: u8,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` holds `token` in its comma-separated list (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The bearer token from `Authorization: Bearer`, else from `?token=`.
    pub fn token(&self) -> Option<String> {
        if let Some(v) = self.header("authorization") {
            let v = v.trim();
            if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
                return Some(v[7..].trim().to_string());
            }
        }
        let q = self.query.as_deref()?;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "token").then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than [`MAX_HEAD_BYTES`].
    #[error("request head too large")]
    TooLarge,
    /// Not a valid HTTP/1.x request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The peer closed before sending a whole head.
    #[error("connection closed before the request head ended")]
    Eof,
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one request head. Returns it and the bytes read past its end (the start of
/// the body or of WebSocket frames).
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        // Read straight into the spare capacity (no stack buffer held across the
        // await), never past the head limit.
        let want = (MAX_HEAD_BYTES - buf.len()).min(1024);
        buf.reserve(want);
        let n = (&mut *stream).take(want as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        if let Some((head, used)) = parse_head(&buf)? {
            let rest = buf.split_off(used);
            return Ok((head, rest));
        }
    }
}

/// Parses a complete head from `buf`: `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(used)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (target.to_string(), None),
            };
            let headers = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((
                RequestHead {
                    method: req.method.unwrap_or("").to_string(),
                    path,
                    query,
                    version: req.version.unwrap_or(0),
                    headers,
                },
                used,
            )))
        }
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Why an upgrade request is not a valid WebSocket handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeError {
    /// Not `GET` over HTTP/1.1 with `Upgrade: websocket` and `Connection: upgrade`.
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13 (answered 426 with the supported version).
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes of base64.
    Key,
}

/// Checks the upgrade headers and returns the `Sec-WebSocket-Key`.
pub fn check_upgrade(head: &RequestHead) -> Result<&str, UpgradeError> {
    if head.method != "GET"
        || head.version < 1
        || !head.header_has_token("upgrade", "websocket")
        || !head.header_has_token("connection", "upgrade")
    {
        return Err(UpgradeError::NotUpgrade);
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(UpgradeError::Version);
    }
    let key = head
        .header("sec-websocket-key")
        .map(str::trim)
        .ok_or(UpgradeError::Key)?;
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => Ok(key),
        _ => Err(UpgradeError::Key),
    }
}

/// Writes a small response and closes the exchange (`Connection: close`).
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n{extra_headers}\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    // Half-close so the client sees the end; ignore errors on an already gone peer.
    let _ = stream.shutdown().await;
    Ok(())
}

/// The `101 Switching Protocols` answer for `key`.
pub fn switching_protocols(key: &str) -> String {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        parse_head(raw.as_bytes())
            .expect("parse")
            .expect("complete")
            .0
    }

    #[test]
    fn token_from_header_or_query() {
        let h = head("GET /ws?x=1&token=al%69ce HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.path, "/ws");
        assert_eq!(h.token().as_deref(), Some("alice"));
        let h = head("GET /ws?token=q HTTP/1.1\r\nAuthorization: Bearer  hdr \r\n\r\n");
        assert_eq!(h.token().as_deref(), Some("hdr"));
        let h = head("GET /ws HTTP/1.1\r\nAuthorization: Basic x\r\n\r\n");
        assert_eq!(h.token(), None);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn partial_and_rest() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost:")
            .expect("ok")
            .is_none());
        let (_, used) = parse_head(b"GET / HTTP/1.1\r\n\r\nXYZ")
            .expect("ok")
            .expect("complete");
        assert_eq!(used, 18);
        assert!(parse_head(b"\x00\x01 nonsense\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn read_head_keeps_the_rest_and_bounds_the_size() {
        let mut input: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x81\x00";
        let (h, rest) = read_head(&mut input).await.expect("head");
        assert_eq!(h.path, "/healthz");
        assert_eq!(rest, b"\x81\x00");
        let big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let mut input = big.as_bytes();
        assert!(matches!(
            read_head(&mut input).await,
            Err(HeadError::TooLarge)
        ));
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(read_head(&mut input).await, Err(HeadError::Eof)));
    }

    #[test]
    fn upgrade_checks() {
        let ok = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(check_upgrade(&head(ok)), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(
            check_upgrade(&head(&ok.replace("13", "8"))),
            Err(UpgradeError::Version)
        );
        assert_eq!(
            check_upgrade(&head(&ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "abc"))),
            Err(UpgradeError::Key)
        );
        assert_eq!(
            check_upgrade(&head("GET /ws HTTP/1.1\r\n\r\n")),
            Err(UpgradeError::NotUpgrade)
        );
        // RFC 6455's example.
        assert!(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")
            .contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }
}
