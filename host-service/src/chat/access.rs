//! Who may see, change and fill a channel. The owner side (the owner, their devices, the local
//! admin) may do anything; other people see only channels they are members of and change only
//! channels they made. The HTTP layer and the WebSocket both ask here.

use taos_proto::chat::{Channel, MemberAction};

use super::{Chat, ChatError, USER_MEMBER_PREFIX};

/// Who is asking about a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer<'a> {
    /// The owner side: every channel.
    Owner,
    /// A person other than the owner, by their member id (`user:<username>`).
    Member(&'a str),
}

impl<'a> Viewer<'a> {
    /// `None` is the owner side, else a person's member id.
    pub fn of(member: Option<&'a str>) -> Self {
        member.map_or(Viewer::Owner, Viewer::Member)
    }

    /// Whether this viewer sees the channel at all (one it doesn't see looks like it doesn't
    /// exist).
    pub fn sees(self, channel: &Channel) -> bool {
        match self {
            Viewer::Owner => true,
            Viewer::Member(me) => channel.members.iter().any(|m| m == me),
        }
    }

    /// Whether this viewer may rename, archive or delete the channel or change its people.
    pub fn manages(self, channel: &Channel) -> bool {
        match self {
            Viewer::Owner => true,
            Viewer::Member(me) => channel.created_by.as_deref() == Some(me),
        }
    }

    /// Agents are the owner's: only the owner side may put one in a channel (it would answer
    /// there, on the owner's models and budget). Anyone who manages a channel may add people.
    pub fn may_add(self, member: &str) -> Result<(), ChatError> {
        if self == Viewer::Owner || member.starts_with(USER_MEMBER_PREFIX) {
            Ok(())
        } else {
            Err(ChatError::Forbidden(
                "only the owner may add an agent to a channel".to_string(),
            ))
        }
    }
}

impl Chat {
    /// Checks that the viewer may make this member change before it is made: anyone may leave
    /// a channel they see; other changes need a channel they manage, and only the owner side
    /// adds agents.
    pub async fn check_member_change(
        &self,
        viewer: Viewer<'_>,
        id: &str,
        action: MemberAction,
        member: &str,
    ) -> Result<(), ChatError> {
        let leaving = action == MemberAction::Remove && viewer == Viewer::Member(member);
        if leaving {
            self.visible_channel(viewer, id).await?;
        } else {
            self.manageable_channel(viewer, id).await?;
            if action == MemberAction::Add {
                viewer.may_add(member)?;
            }
        }
        Ok(())
    }

    /// The channel, if the viewer may see it (else "no such channel", as for a made-up id).
    pub async fn visible_channel(
        &self,
        viewer: Viewer<'_>,
        id: &str,
    ) -> Result<Channel, ChatError> {
        let channel = self.channel(id).await?;
        if !viewer.sees(&channel) {
            return Err(ChatError::NotFound("no such channel"));
        }
        Ok(channel)
    }

    /// The channel, if the viewer may change it: one they see but may not change is refused
    /// as forbidden.
    pub async fn manageable_channel(
        &self,
        viewer: Viewer<'_>,
        id: &str,
    ) -> Result<Channel, ChatError> {
        let channel = self.visible_channel(viewer, id).await?;
        if !viewer.manages(&channel) {
            return Err(ChatError::Forbidden(
                "only the owner or the channel's creator may change this channel".to_string(),
            ));
        }
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taos_proto::chat::{ChannelSettings, ChannelType};

    fn channel(members: &[&str], created_by: Option<&str>) -> Channel {
        Channel {
            id: "c".into(),
            name: "c".into(),
            kind: ChannelType::Group,
            members: members.iter().map(|m| m.to_string()).collect(),
            settings: ChannelSettings::default(),
            created_at: chrono::Utc::now(),
            last_seq: 0,
            archived: false,
            created_by: created_by.map(str::to_string),
        }
    }

    #[test]
    fn the_owner_side_sees_and_manages_every_channel() {
        let c = channel(&[], None);
        assert!(Viewer::Owner.sees(&c));
        assert!(Viewer::Owner.manages(&c));
        assert!(Viewer::Owner.may_add("some-agent").is_ok());
    }

    #[test]
    fn a_person_sees_channels_they_are_in_and_manages_those_they_made() {
        let theirs = channel(&["user:ann"], Some("user:ann"));
        let joined = channel(&["user:ann", "user:bob"], Some("user:bob"));
        let other = channel(&["user:bob"], Some("user:bob"));
        let ann = Viewer::Member("user:ann");
        assert!(ann.sees(&theirs) && ann.manages(&theirs));
        assert!(ann.sees(&joined) && !ann.manages(&joined));
        assert!(!ann.sees(&other));
        // A name that merely starts like a member's is not that member.
        assert!(!Viewer::Member("user:an").sees(&theirs));
    }

    #[test]
    fn only_the_owner_side_adds_agents() {
        let ann = Viewer::Member("user:ann");
        assert!(ann.may_add("user:bob").is_ok());
        assert!(matches!(
            ann.may_add("some-agent"),
            Err(ChatError::Forbidden(_))
        ));
    }
}
