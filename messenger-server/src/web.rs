//! The browser chat, built into the binary: `GET /` (the page), `/chat.js` and
//! `/chat.css`, served by [`router`] (the binary merges it next to
//! [`Server::router`](crate::Server::router); an embedder may do the same or not).
//!
//! The files under `assets/web/` are generated from `messenger-js/web/` and the
//! TypeScript SDK (`npm run build:web` in `messenger-js/`) and committed, so the server
//! builds with Rust alone; `scripts/test.sh` checks that they match their sources. The
//! page talks only to `/ws` on the same origin, with the token the user types.

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// The `content-type` to answer with.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../assets/web/index.html"),
};
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!("../assets/web/chat.js"),
};
const STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_bytes!("../assets/web/chat.css"),
};

/// Headers sent with every asset: revalidate on each load (the binary may be
/// upgraded in place), no sniffing, and a policy that lets the page load only its own
/// script and style and connect only to its own origin.
pub const HEADERS: [(&str, &str); 4] = [
    ("cache-control", "no-cache"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; \
         connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
    ),
];

/// A router serving the page and its files (`GET` only; other methods get 405).
#[cfg(feature = "axum")]
pub fn router() -> axum::Router {
    use axum::response::IntoResponse;
    use axum::routing::get;
    fn serve(a: Asset) -> axum::response::Response {
        let mut r = ([(http::header::CONTENT_TYPE, a.content_type)], a.body).into_response();
        for (k, v) in HEADERS {
            r.headers_mut().insert(k, http::HeaderValue::from_static(v));
        }
        r
    }
    axum::Router::new()
        .route("/", get(|| async { serve(INDEX) }))
        .route("/index.html", get(|| async { serve(INDEX) }))
        .route("/chat.js", get(|| async { serve(SCRIPT) }))
        .route("/chat.css", get(|| async { serve(STYLE) }))
}

/// The asset served at `path` (without the query), if any.
pub fn asset(path: &str) -> Option<Asset> {
    match path {
        "/" | "/index.html" => Some(INDEX),
        "/chat.js" => Some(SCRIPT),
        "/chat.css" => Some(STYLE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_what_it_loads_are_embedded() {
        let page = asset("/").expect("index");
        let html = std::str::from_utf8(page.body).expect("utf-8");
        assert!(html.contains(r#"src="chat.js""#) && html.contains(r#"href="chat.css""#));
        assert!(asset("/chat.js").expect("js").body.len() > 1000);
        assert!(asset("/chat.css").is_some());
        assert_eq!(asset("/index.html"), Some(page));
        assert_eq!(asset("/nope"), None);
    }
}
