//! Runnable messenger programs, one file per example (this library is empty: the
//! package exists to hold them). Run one with `cargo run -p examples --example NAME`:
//!
//! | example | what it shows |
//! |---|---|
//! | `chat` | a terminal chat on the client SDK (`--store PATH`: a persistent outbox) |
//! | `echo_bot` | a bot that answers every message it receives (`--store PATH`: survives restarts) |
//! | `token_refresh` | short-lived JWTs rotated by a token provider |
//! | `embedded` | the server embedded in an application, with its own push sink |
//! | `custom_store` | a custom `MessageStore` checked by the conformance suite |
