//! Validated identifier newtypes.
//!
//! Every id that crosses the wire is validated exactly as protocol v1 says:
//! user ids are 1 to 64 characters of `A-Z a-z 0-9 _ . -`, thread ids 1 to 128
//! characters of `A-Z a-z 0-9 _ . : -`. String ids are backed by `Arc<str>` so
//! that cloning one on the fan-out path never allocates.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidId {
    /// Which kind of id was being parsed (`user_id`, `thread_id`, ...).
    pub what: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl From<InvalidId> for Error {
    fn from(e: InvalidId) -> Self {
        Error::new(ErrorKind::BadRequest, e.to_string())
    }
}

fn check_chars(what: &'static str, s: &str, max: usize, extra: &[u8]) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId {
            what,
            reason: "must not be empty".into(),
        });
    }
    if s.len() > max {
        return Err(InvalidId {
            what,
            reason: format!("longer than {max} characters"),
        });
    }
    if let Some(c) = s
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || extra.contains(b)))
    {
        let shown = if c.is_ascii_graphic() {
            format!("'{}'", c as char)
        } else {
            format!("byte 0x{c:02x}")
        };
        return Err(InvalidId {
            what,
            reason: format!("contains {shown}; allowed are A-Z a-z 0-9 and {}", {
                let mut v: Vec<String> = extra.iter().map(|b| (*b as char).to_string()).collect();
                v.sort();
                v.join(" ")
            }),
        });
    }
    Ok(())
}

/// A string from a deserializer, borrowed when the input allows it (a JSON string with
/// no escapes), so an id is copied once, into its `Arc<str>`. (`Cow<str>`'s own
/// `Deserialize` always makes an owned copy first.)
fn borrowed_str<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'de, str>, D::Error> {
    struct Str;
    impl<'de> serde::de::Visitor<'de> for Str {
        type Value = Cow<'de, str>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }

        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    d.deserialize_str(Str)
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $what:literal, $max:expr, $extra:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Maximum length in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `s`.
            pub fn new(s: impl AsRef<str>) -> Result<Self, InvalidId> {
                let s = s.as_ref();
                check_chars($what, s, $max, $extra)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether `s` is a valid id (what [`new`](Self::new) checks), without
            /// making one.
            #[allow(dead_code)] // used for some of the id types only
            pub(crate) fn is_valid(s: &str) -> bool {
                check_chars($what, s, $max, $extra).is_ok()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidId;
            fn try_from(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = borrowed_str(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A user id: 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
    UserId,
    "user_id",
    64,
    b"_.-"
);

string_id!(
    /// A thread id: 1 to 128 characters of `A-Z a-z 0-9 _ . : -`.
    ThreadId,
    "thread_id",
    128,
    b"_.:-"
);

string_id!(
    /// A session id as sent in `welcome` (`s-` followed by digits).
    SessionId,
    "session_id",
    64,
    b"_.:-"
);

impl SessionId {
    /// The session id for a Snowflake-style id.
    pub fn from_id(id: u64) -> Self {
        Self(Arc::from(format!("s-{id}")))
    }
}

impl ThreadId {
    /// The canonical id of the direct thread between `a` and `b`.
    ///
    /// Both orders give the same id. It is `dm:<lesser>:<greater>` when that fits
    /// in 128 characters, and `dm.<sha256 hex of "lesser\ngreater">` otherwise.
    pub fn direct(a: &UserId, b: &UserId) -> ThreadId {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let plain = format!("dm:{lo}:{hi}");
        if plain.len() <= Self::MAX_LEN {
            return ThreadId(Arc::from(plain));
        }
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(lo.as_str().as_bytes());
        h.update(b"\n");
        h.update(hi.as_str().as_bytes());
        let digest = h.finalize();
        let mut s = String::with_capacity(3 + 64);
        s.push_str("dm.");
        for b in digest {
            s.push_str(&format!("{b:02x}"));
        }
        ThreadId(Arc::from(s))
    }

    /// The id of a new group thread built from a fresh unique id.
    pub fn group(id: MessageId) -> ThreadId {
        ThreadId(Arc::from(format!("g:{}", id.0)))
    }
}

/// A 64-bit Snowflake-style id, sent on the wire as its decimal string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for MessageId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        let bad = |reason: &str| InvalidId {
            what: "message_id",
            reason: reason.into(),
        };
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("must be the decimal string of a 64-bit id"));
        }
        s.parse::<u64>()
            .map(MessageId)
            .map_err(|_| bad("out of the 64-bit range"))
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = borrowed_str(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The id of a server node in a cluster (0 to 1023, the Snowflake node field).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct NodeId(u16);

impl NodeId {
    /// The largest node id that fits the 10-bit Snowflake field.
    pub const MAX: u16 = 1023;

    /// Validates a node id.
    pub fn new(id: u16) -> Result<Self, InvalidId> {
        if id > Self::MAX {
            return Err(InvalidId {
                what: "node_id",
                reason: format!("{id} is above {}", Self::MAX),
            });
        }
        Ok(NodeId(id))
    }

    /// The numeric value.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("A-z_0.9").is_ok());
        assert!(UserId::new("a".repeat(64)).is_ok());
        assert!(UserId::new("a".repeat(65)).is_err());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("al ice").is_err());
        assert!(UserId::new("a:b").is_err());
        assert!(UserId::new("é").is_err());
    }

    #[test]
    fn thread_ids() {
        assert!(ThreadId::new("dm:a:b").is_ok());
        assert!(ThreadId::new("x".repeat(128)).is_ok());
        assert!(ThreadId::new("x".repeat(129)).is_err());
        assert!(ThreadId::new("a/b").is_err());
    }

    #[test]
    fn direct_ids_are_canonical_and_valid() {
        let a = UserId::new("bob").unwrap();
        let b = UserId::new("alice").unwrap();
        assert_eq!(ThreadId::direct(&a, &b), ThreadId::direct(&b, &a));
        assert_eq!(ThreadId::direct(&a, &b).as_str(), "dm:alice:bob");
        let long_a = UserId::new("a".repeat(64)).unwrap();
        let long_b = UserId::new("b".repeat(64)).unwrap();
        let t = ThreadId::direct(&long_a, &long_b);
        assert!(ThreadId::new(t.as_str()).is_ok());
        assert_eq!(t, ThreadId::direct(&long_b, &long_a));
    }

    #[test]
    fn message_ids() {
        assert_eq!("42".parse::<MessageId>().unwrap(), MessageId(42));
        assert!("18446744073709551615".parse::<MessageId>().is_ok());
        assert!("18446744073709551616".parse::<MessageId>().is_err());
        assert!("-1".parse::<MessageId>().is_err());
        assert!("".parse::<MessageId>().is_err());
        assert!("1e3".parse::<MessageId>().is_err());
    }
}
