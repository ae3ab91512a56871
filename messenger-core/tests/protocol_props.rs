//! Property tests: every client and server frame encodes and decodes to itself.

use std::collections::BTreeMap;

use messenger_core::model::{AckStatus, PresenceStatus, ThreadKind};
use messenger_core::protocol::{
    decode_client, ClientFrame, CreateThread, HistoryMessage, Receipt, ReqId, ServerFrame,
    ThreadSummary,
};
use messenger_core::push::PushPlatform;
use messenger_core::{MessageId, SessionId, ThreadId, UserId};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn user() -> impl Strategy<Value = UserId> {
    "[A-Za-z0-9_.-]{1,64}".prop_map(|s| UserId::new(s).expect("valid by construction"))
}

fn thread() -> impl Strategy<Value = ThreadId> {
    "[A-Za-z0-9_.:-]{1,128}".prop_map(|s| ThreadId::new(s).expect("valid by construction"))
}

fn msg_id() -> impl Strategy<Value = MessageId> {
    any::<u64>().prop_map(MessageId)
}

fn req_id() -> impl Strategy<Value = Option<ReqId>> {
    option::of(prop_oneof![
        any::<u64>().prop_map(ReqId::UInt),
        (i64::MIN..0).prop_map(ReqId::Int),
        ".{0,20}".prop_map(ReqId::Str),
    ])
}

fn status() -> impl Strategy<Value = AckStatus> {
    prop_oneof![Just(AckStatus::Delivered), Just(AckStatus::Read)]
}

fn kind() -> impl Strategy<Value = ThreadKind> {
    prop_oneof![Just(ThreadKind::Direct), Just(ThreadKind::Group)]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (thread(), ".{0,30}", any::<String>()).prop_map(|(thread_id, temp_id, text)| {
            ClientFrame::SendMessage {
                thread_id,
                temp_id,
                text,
            }
        }),
        (thread(), msg_id(), status()).prop_map(|(thread_id, message_id, status)| {
            ClientFrame::MessageAck {
                thread_id,
                message_id,
                status,
            }
        }),
        (kind(), vec(user(), 0..5), option::of(".{0,20}")).prop_map(|(kind, members, title)| {
            ClientFrame::CreateThread(CreateThread {
                kind,
                members,
                title,
            })
        }),
        (thread(), vec(user(), 0..5))
            .prop_map(|(thread_id, members)| ClientFrame::AddMembers { thread_id, members }),
        thread().prop_map(|thread_id| ClientFrame::LeaveThread { thread_id }),
        Just(ClientFrame::ListThreads {}),
        (
            thread(),
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(any::<u64>())
        )
            .prop_map(|(thread_id, before_seq, after_seq, limit)| {
                ClientFrame::FetchHistory {
                    thread_id,
                    before_seq,
                    after_seq,
                    limit,
                }
            }),
        vec(user(), 0..5).prop_map(|user_ids| ClientFrame::PresenceSubscribe { user_ids }),
        vec(user(), 0..5).prop_map(|user_ids| ClientFrame::PresenceUnsubscribe { user_ids }),
        (thread(), any::<bool>())
            .prop_map(|(thread_id, typing)| ClientFrame::Typing { thread_id, typing }),
        Just(ClientFrame::Ping {}),
        (
            prop_oneof![Just(PushPlatform::Apns), Just(PushPlatform::Fcm)],
            "[0-9a-f]{64}",
            option::of("[a-z.]{1,20}"),
            option::of("[a-z]{2}-[A-Z]{2}"),
            option::of(any::<bool>()),
        )
            .prop_map(|(platform, token, app_id, locale, sandbox)| {
                ClientFrame::RegisterPushTarget {
                    platform,
                    token: Some(token),
                    subscription: None,
                    app_id,
                    locale,
                    sandbox,
                }
            }),
        "[a-z]{4}-[0-9a-f]{32}"
            .prop_map(|target_id| ClientFrame::UnregisterPushTarget { target_id }),
        Just(ClientFrame::ListPushTargets {}),
        (thread(), option::of(any::<u64>()))
            .prop_map(|(thread_id, until)| ClientFrame::MuteThread { thread_id, until }),
        thread().prop_map(|thread_id| ClientFrame::UnmuteThread { thread_id }),
    ]
}

fn summary() -> impl Strategy<Value = ThreadSummary> {
    (
        thread(),
        kind(),
        option::of(".{0,20}"),
        vec(user(), 0..4),
        any::<u64>(),
        vec((user(), any::<u64>(), any::<u64>()), 0..4),
        any::<u64>(),
    )
        .prop_map(
            |(thread_id, kind, title, members, last_seq, receipts, unread)| ThreadSummary {
                thread_id,
                kind,
                title,
                members,
                last_seq,
                receipts: receipts
                    .into_iter()
                    .map(|(u, d, r)| {
                        (
                            u,
                            Receipt {
                                delivered_seq: d,
                                read_seq: r,
                            },
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
                unread,
                muted: false,
                muted_until: None,
            },
        )
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (user(), any::<u64>(), any::<u64>()).prop_map(|(user_id, s, server_time)| {
            ServerFrame::Welcome {
                user_id,
                session_id: SessionId::from_id(s),
                server_time,
            }
        }),
        (
            req_id(),
            thread(),
            ".{0,30}",
            msg_id(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(req_id, thread_id, temp_id, message_id, seq, sent_at)| {
                ServerFrame::MessageSent {
                    req_id,
                    thread_id,
                    temp_id,
                    message_id,
                    seq,
                    sent_at,
                }
            }),
        (
            thread(),
            msg_id(),
            any::<u64>(),
            user(),
            any::<String>(),
            any::<u64>()
        )
            .prop_map(|(thread_id, message_id, seq, sender_id, text, sent_at)| {
                ServerFrame::ReceiveMessage {
                    thread_id,
                    message_id,
                    seq,
                    sender_id,
                    text,
                    sent_at,
                }
            }),
        (
            thread(),
            msg_id(),
            any::<u64>(),
            status(),
            user(),
            any::<u64>()
        )
            .prop_map(|(thread_id, message_id, seq, status, user_id, at)| {
                ServerFrame::MessageAck {
                    thread_id,
                    message_id,
                    seq,
                    status,
                    user_id,
                    at,
                }
            }),
        (
            req_id(),
            thread(),
            kind(),
            option::of(".{0,20}"),
            vec(user(), 0..4)
        )
            .prop_map(
                |(req_id, thread_id, kind, title, members)| ServerFrame::Thread {
                    req_id,
                    thread_id,
                    kind,
                    title,
                    members,
                }
            ),
        (req_id(), vec(summary(), 0..3))
            .prop_map(|(req_id, threads)| ServerFrame::Threads { req_id, threads }),
        (
            req_id(),
            thread(),
            vec(
                (
                    msg_id(),
                    any::<u64>(),
                    user(),
                    any::<String>(),
                    any::<u64>()
                ),
                0..4
            ),
            any::<bool>()
        )
            .prop_map(|(req_id, thread_id, msgs, has_more)| ServerFrame::History {
                req_id,
                thread_id,
                messages: msgs
                    .into_iter()
                    .map(
                        |(message_id, seq, sender_id, text, sent_at)| HistoryMessage {
                            message_id,
                            seq,
                            sender_id,
                            text,
                            sent_at,
                        }
                    )
                    .collect(),
                has_more,
            }),
        (
            req_id(),
            user(),
            prop_oneof![Just(PresenceStatus::Online), Just(PresenceStatus::Offline)],
            option::of(any::<u64>())
        )
            .prop_map(
                |(req_id, user_id, status, last_seen)| ServerFrame::Presence {
                    req_id,
                    user_id,
                    status,
                    last_seen,
                }
            ),
        (thread(), user(), any::<bool>()).prop_map(|(thread_id, user_id, typing)| {
            ServerFrame::Typing {
                thread_id,
                user_id,
                typing,
            }
        }),
        req_id().prop_map(|req_id| ServerFrame::Pong { req_id }),
        (req_id(), "[a-z_]{1,12}", any::<String>()).prop_map(|(req_id, code, message)| {
            ServerFrame::Error {
                req_id,
                code,
                message,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(frame in client_frame(), rid in req_id()) {
        let text = frame.encode(rid.as_ref());
        let decoded = decode_client(&text).expect("a frame we encoded must decode");
        prop_assert_eq!(decoded.frame, frame);
        prop_assert_eq!(decoded.req_id, rid);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let text = frame.encode();
        let back = ServerFrame::decode(&text).expect("a frame we encoded must decode");
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn decoder_never_panics_and_classifies(text in ".{0,200}") {
        if let Err(e) = decode_client(&text) {
            prop_assert!(e.code == "bad_request" || e.code == "unknown_type");
        }
    }

    #[test]
    fn unknown_types_are_unknown_type(ty in "[a-z_]{1,20}") {
        prop_assume!(!messenger_core::protocol::CLIENT_FRAME_TYPES.contains(&ty.as_str()));
        let e = decode_client(&format!(r#"{{"type":"{ty}"}}"#)).expect_err("unknown");
        prop_assert_eq!(e.code, "unknown_type");
    }
}
