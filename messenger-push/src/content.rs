//! What a notification shows and what leaves the server: the [`Privacy`] setting and
//! the rendering every provider shares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::provider::Notification;

/// How much of a message a push notification carries. Whatever the setting, the
/// thread id, message id and seq leave the server (the app needs them to open the
/// thread and fetch the message over its own connection); a direct thread's id
/// (`dm:alice:bob`) names both users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Privacy {
    /// Sender and text (cut to [`Notification::MAX_PREVIEW`] bytes): title = sender
    /// id, body = text.
    #[default]
    Full,
    /// Sender only: title = sender id, body = "New message" (in the target's locale).
    /// The text never leaves the server.
    SenderOnly,
    /// Nothing about the message: title = "New message", no body. Neither sender nor
    /// text leaves the server.
    Generic,
}

/// A notification as a provider shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The title line (sender, or the generic text).
    pub title: String,
    /// The body (the text, the generic text, or empty).
    pub body: Option<String>,
    /// Data for the app (strings only, as FCM requires): `thread_id`, `message_id`,
    /// `seq`, `notification_id`, plus `sender_id` unless [`Privacy::Generic`].
    pub data: BTreeMap<String, String>,
}

/// "New message" in the target's language (by the locale's primary subtag); English
/// when the language is not known.
pub fn new_message_text(locale: Option<&str>) -> &'static str {
    let lang = locale
        .and_then(|l| l.split(['-', '_']).next())
        .map(str::to_ascii_lowercase);
    match lang.as_deref() {
        Some("de") => "Neue Nachricht",
        Some("fr") => "Nouveau message",
        Some("es") => "Nuevo mensaje",
        Some("it") => "Nuovo messaggio",
        Some("pt") => "Nova mensagem",
        Some("nl") => "Nieuw bericht",
        _ => "New message",
    }
}

impl Privacy {
    /// Renders `n` for a target with `locale`.
    pub fn render(self, n: &Notification, locale: Option<&str>) -> Rendered {
        let mut data = BTreeMap::new();
        data.insert("notification_id".into(), n.id.clone());
        data.insert("thread_id".into(), n.thread_id.to_string());
        data.insert("message_id".into(), n.message_id.to_string());
        data.insert("seq".into(), n.seq.to_string());
        let generic = new_message_text(locale).to_string();
        let (title, body) = match self {
            Privacy::Full => (n.sender_id.to_string(), Some(n.text.clone())),
            Privacy::SenderOnly => (n.sender_id.to_string(), Some(generic)),
            Privacy::Generic => (generic, None),
        };
        if self != Privacy::Generic {
            data.insert("sender_id".into(), n.sender_id.to_string());
        }
        Rendered { title, body, data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_core::{MessageId, ThreadId, UserId};

    fn n() -> Notification {
        Notification::new(
            UserId::new("bob").unwrap(),
            ThreadId::new("dm:alice:bob").unwrap(),
            MessageId(7),
            3,
            UserId::new("alice").unwrap(),
            "the secret plan",
            1,
        )
    }

    #[test]
    fn each_setting_shows_only_what_it_says() {
        let full = Privacy::Full.render(&n(), None);
        assert_eq!(
            (full.title.as_str(), full.body.as_deref()),
            ("alice", Some("the secret plan"))
        );
        let sender = Privacy::SenderOnly.render(&n(), Some("de-CH"));
        assert_eq!(
            (sender.title.as_str(), sender.body.as_deref()),
            ("alice", Some("Neue Nachricht"))
        );
        let generic = Privacy::Generic.render(&n(), Some("fr"));
        assert_eq!(
            (generic.title.as_str(), generic.body.as_deref()),
            ("Nouveau message", None)
        );
        // Neither sender nor text (direct thread ids name both users, though: see the
        // docs on what leaves the server).
        assert!(!generic.data.contains_key("sender_id"));
        assert!(!format!("{generic:?}").contains("secret"));
        assert_eq!(generic.data["thread_id"], "dm:alice:bob");
        assert_eq!(generic.data["seq"], "3");
    }
}
