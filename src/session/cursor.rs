//! The resume cursor of the SSE and long-polling transports: the SSE event id and the
//! poll `cursor` (contract section 2).
//!
//! It names the device and, per channel, the last seq the client has:
//! `web-1/dm:alice:bob~12,group:g1~40`. That is all a broker needs to resume the client,
//! on any node: the device's cursors for the channels it does not name are in the store
//! (each arrival stores the ones it names, as `delivered` does), and the positions in
//! broadcast channels, which have no stored cursor, travel in it. It holds only the
//! broadcast positions and the channels of the one stream or response that made it.
//! Only characters that need no escaping in a URL query or an SSE field are used.
//!
//! The SSE and poll sessions both start with `SessionActor::resume_from`, here with the
//! cursor it reads.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use switchboard_actors::ids::{valid_id, Channel, ChannelKind};
use switchboard_actors::seq::Seq;

use super::{Ctx, SessionActor, Wire};

/// Most channels one cursor names.
pub const MAX_CHANNELS: usize = 1024;

/// Between the device and its channels.
const DEVICE_END: char = '/';
/// Between two channels.
const SEPARATOR: char = ',';
/// Between a channel and its seq.
const SEQ_MARK: char = '~';

/// Why a cursor was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    /// Not `device/channel~seq,…`.
    #[error("the resume cursor is malformed: {0}")]
    Malformed(&'static str),
    /// Over [`MAX_CHANNELS`].
    #[error("the resume cursor names more than {MAX_CHANNELS} channels")]
    TooLong,
}

/// A client's position: its device and the last seq it has per channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeCursor {
    /// The device (`client_id`).
    pub client_id: Arc<str>,
    /// Per channel, the last seq the client has.
    pub channels: BTreeMap<Arc<str>, Seq>,
    /// The text form, made again only after a change.
    text: Option<String>,
}

impl ResumeCursor {
    /// A cursor of device `client_id` with no channel yet.
    pub fn new(client_id: Arc<str>) -> Self {
        ResumeCursor {
            client_id,
            channels: BTreeMap::new(),
            text: None,
        }
    }

    /// Reads a cursor's text form.
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let (device, list) = text
            .split_once(DEVICE_END)
            .ok_or(CursorError::Malformed("no `/` after the device id"))?;
        if !valid_id(device) {
            return Err(CursorError::Malformed("the device id is not a valid id"));
        }
        let mut cursor = ResumeCursor::new(Arc::from(device));
        for entry in list.split(SEPARATOR).filter(|e| !e.is_empty()) {
            if cursor.channels.len() == MAX_CHANNELS {
                return Err(CursorError::TooLong);
            }
            let (name, seq) = entry
                .rsplit_once(SEQ_MARK)
                .ok_or(CursorError::Malformed("a channel without `~seq`"))?;
            let channel =
                Channel::parse(name).ok_or(CursorError::Malformed("not a channel name"))?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| CursorError::Malformed("a seq that is not a number"))?;
            if i64::try_from(seq).is_err() {
                return Err(CursorError::Malformed("a seq out of range"));
            }
            cursor.channels.insert(channel.name, Seq::new(seq));
        }
        Ok(cursor)
    }

    /// The client has `channel` up to `seq`; true if that moved the cursor.
    pub fn advance(&mut self, channel: &str, seq: Seq) -> bool {
        match self.channels.get_mut(channel) {
            Some(s) if *s >= seq => false,
            Some(s) => {
                *s = seq;
                self.text = None;
                true
            }
            None => {
                self.channels.insert(Arc::from(channel), seq);
                self.text = None;
                true
            }
        }
    }

    /// The broadcast channels it names, with their positions.
    pub fn broadcasts(&self) -> impl Iterator<Item = (Channel, Seq)> + '_ {
        self.channels.iter().filter_map(|(name, seq)| {
            let channel = Channel::parse(name)?;
            matches!(channel.kind, ChannelKind::Broadcast(_)).then_some((channel, *seq))
        })
    }

    /// The other channels it names (the device's own, with stored cursors).
    pub fn device_channels(&self) -> impl Iterator<Item = (Channel, Seq)> + '_ {
        self.channels.iter().filter_map(|(name, seq)| {
            let channel = Channel::parse(name)?;
            (!matches!(channel.kind, ChannelKind::Broadcast(_))).then_some((channel, *seq))
        })
    }

    /// Keeps only the broadcast positions: what a new stream or response starts from.
    pub fn broadcasts_only(&self) -> Self {
        let mut next = ResumeCursor::new(self.client_id.clone());
        for (channel, seq) in self.broadcasts() {
            next.channels.insert(channel.name, seq);
        }
        next
    }

    /// The text form (cached until the cursor moves).
    pub fn text(&mut self) -> &str {
        let (client_id, channels) = (&self.client_id, &self.channels);
        self.text.get_or_insert_with(|| {
            let mut s = String::with_capacity(client_id.len() + 1 + channels.len() * 24);
            s.push_str(client_id);
            s.push(DEVICE_END);
            for (i, (name, seq)) in channels.iter().enumerate() {
                if i > 0 {
                    s.push(SEPARATOR);
                }
                let _ = write!(s, "{name}{SEQ_MARK}{seq}");
            }
            s
        })
    }
}

impl<W: Wire> SessionActor<W> {
    /// Resumes a cursor-based client: stores the device positions of `cursor` as
    /// delivered, subscribes to `subscribe` (from the cursor's position where it has one)
    /// and syncs everything else the device has not had.
    pub(super) fn resume_from(
        &mut self,
        cursor: Option<&ResumeCursor>,
        subscribe: &[Channel],
        ctx: &mut Ctx<W>,
    ) {
        let mut had = Vec::new();
        if let Some(c) = cursor {
            for (channel, seq) in c.device_channels() {
                self.store_delivered(&channel, seq);
                had.push((channel, seq));
            }
        }
        for channel in subscribe {
            let since = cursor.and_then(|c| c.channels.get(&channel.name).copied());
            self.subscribe(channel.clone(), since, None, ctx);
        }
        self.sync(had, None, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let mut c = ResumeCursor::new(Arc::from("web-1"));
        assert_eq!(c.text(), "web-1/");
        assert!(c.advance("dm:alice:bob", Seq::new(12)));
        assert!(c.advance("broadcast:news", Seq::new(3)));
        assert!(!c.advance("dm:alice:bob", Seq::new(11)), "never backwards");
        let text = c.text().to_owned();
        assert_eq!(text, "web-1/broadcast:news~3,dm:alice:bob~12");
        let mut back = ResumeCursor::parse(&text).expect("parses");
        assert_eq!(back.text(), text);
        assert_eq!(back.broadcasts().count(), 1);
        assert_eq!(back.device_channels().count(), 1);
        assert_eq!(back.broadcasts_only().channels.len(), 1);
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for bad in [
            "",
            "no-device-mark",
            "bad id/",
            "web/dm:a:b",
            "web/dm:a:b~x",
            "web/nochannel~1",
            "web/dm:a:b~-1",
            "web/dm:a:b~99999999999999999999",
        ] {
            assert!(ResumeCursor::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ResumeCursor::parse("web/").is_ok());
        let long: Vec<String> = (0..=MAX_CHANNELS)
            .map(|i| format!("group:g{i}~1"))
            .collect();
        assert_eq!(
            ResumeCursor::parse(&format!("web/{}", long.join(","))),
            Err(CursorError::TooLong)
        );
    }
}
