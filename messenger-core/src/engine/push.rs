//! The push frames: registering devices and browsers for push notifications, and
//! muting threads. Stored through [`PushRegistry`](crate::traits::PushRegistry); read
//! by the push providers (`messenger-push`) when a member has no live session.

use std::collections::HashMap;

use super::session::SessionShared;
use super::Engine;
use crate::error::{Error, Result};
use crate::ids::{ThreadId, UserId};
use crate::protocol::{PushTargetInfo, ReqId, ServerFrame};
use crate::push::{
    check_target_id, PushPlatform, PushRegistration, ThreadMute, WebPushSubscription,
};
use crate::time::{now_ms, Millis};

/// The fields of a `register_push_target` frame.
pub(super) struct Registration {
    pub platform: PushPlatform,
    pub token: Option<String>,
    pub subscription: Option<WebPushSubscription>,
    pub app_id: Option<String>,
    pub locale: Option<String>,
    pub sandbox: bool,
}

impl Engine {
    pub(super) async fn register_push_target(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        r: Registration,
    ) -> Result<()> {
        let reg = PushRegistration::validate(
            s.user.clone(),
            r.platform,
            r.token,
            r.subscription,
            r.app_id,
            r.locale,
            r.sandbox,
            now_ms(),
        )?;
        let max = self.inner.config.max_push_targets.max(1);
        let stored = self.inner.a.push_registry.register_target(reg, max).await?;
        tracing::debug!(user = %s.user, target = %stored.target_id, platform = %stored.platform,
            "push target registered");
        self.reply(
            s,
            ServerFrame::PushTarget {
                req_id,
                target: PushTargetInfo::from(&stored),
            },
        );
        Ok(())
    }

    pub(super) async fn unregister_push_target(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        target_id: String,
    ) -> Result<()> {
        check_target_id(&target_id)?;
        let removed = self
            .inner
            .a
            .push_registry
            .unregister_target(&s.user, &target_id)
            .await?;
        self.reply(
            s,
            ServerFrame::PushTargetRemoved {
                req_id,
                target_id,
                removed,
            },
        );
        Ok(())
    }

    pub(super) async fn list_push_targets(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
    ) -> Result<()> {
        let targets = self.inner.a.push_registry.list_targets(&s.user).await?;
        self.reply(
            s,
            ServerFrame::PushTargets {
                req_id,
                targets: targets.iter().map(PushTargetInfo::from).collect(),
            },
        );
        Ok(())
    }

    pub(super) async fn mute_thread(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        thread_id: ThreadId,
        until: Option<Millis>,
    ) -> Result<()> {
        if let Some(u) = until {
            if u <= now_ms() {
                return Err(Error::bad_request(
                    "until is in the past: give a future time (Unix ms), none for ever, \
                     or send unmute_thread",
                ));
            }
        }
        self.member_thread(&thread_id, &s.user).await?;
        self.inner
            .a
            .push_registry
            .set_mute(
                &s.user,
                ThreadMute {
                    thread_id: thread_id.clone(),
                    until,
                },
            )
            .await?;
        self.mute_changed(s, req_id, thread_id, true, until).await;
        Ok(())
    }

    pub(super) async fn unmute_thread(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        thread_id: ThreadId,
    ) -> Result<()> {
        // No membership check: a user who left a group may still clear its mute.
        self.inner
            .a
            .push_registry
            .clear_mute(&s.user, &thread_id)
            .await?;
        self.mute_changed(s, req_id, thread_id, false, None).await;
        Ok(())
    }

    /// Replies to the session and tells the user's other sessions (their thread lists
    /// show the mute).
    async fn mute_changed(
        &self,
        s: &SessionShared,
        req_id: Option<ReqId>,
        thread_id: ThreadId,
        muted: bool,
        until: Option<Millis>,
    ) {
        self.reply(
            s,
            ServerFrame::ThreadMute {
                req_id,
                thread_id: thread_id.clone(),
                muted,
                until,
            },
        );
        self.route(
            vec![s.user.clone()],
            Some(s.id.clone()),
            ServerFrame::ThreadMute {
                req_id: None,
                thread_id,
                muted,
                until,
            },
        )
        .await;
    }

    /// The user's mutes in force now, thread -> until (`None`: for ever). A registry
    /// that cannot be read leaves the thread list without mute marks rather than
    /// failing a catch-up.
    pub(super) async fn active_mutes(&self, user: &UserId) -> HashMap<ThreadId, Option<Millis>> {
        match self.inner.a.push_registry.list_mutes(user).await {
            Ok(list) => {
                let now = now_ms();
                list.into_iter()
                    .filter(|m| m.active(now))
                    .map(|m| (m.thread_id, m.until))
                    .collect()
            }
            Err(e) => {
                tracing::warn!(%user, error = %e,
                    "could not read thread mutes: list_threads shows none this time");
                HashMap::new()
            }
        }
    }
}
