//! What nodes tell each other over the Redis bus, and its byte form.
//!
//! One bus message is one [`Envelope`] from one node. The form is length-prefixed binary,
//! not JSON: a delivery's frame is already JSON text and goes as it is, without being
//! escaped into another document and parsed back on every node.
//!
//! ```text
//! "SB1" | node: str | kind: u8 | body
//! str   = len: u32 LE | UTF-8 bytes
//! list  = count: u32 LE | items
//! ```

use std::sync::Arc;

use bytestring::ByteString;

use crate::ids::{ConnId, UserId};
use crate::protocol::PresenceStatus;
use crate::seq::Seq;

const MAGIC: &[u8; 3] = b"SB1";

/// Who a channel's messages are for, as far as a node that has no actor for the channel
/// needs to know to decide whether to start one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// These users (a DM pair, the user of `user:*`, a group's members when few).
    Users(Arc<[UserId]>),
    /// A group's members, too many to list: a node with any connected user starts the
    /// channel's actor, which loads them.
    Members,
    /// A broadcast channel's subscribers: only a node that already runs the channel's actor
    /// has any.
    Subscribers,
}

/// One channel's last seq, as a node committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Channel name.
    pub channel: Arc<str>,
    /// Its readers.
    pub audience: Audience,
    /// Its last committed seq.
    pub seq: Seq,
}

/// One user's presence as one node contributes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceNote {
    /// The user.
    pub user: UserId,
    /// Online on that node (a connection alive, or its offline grace running).
    pub online: bool,
    /// The status the user last set (`None`: plain online), and when (ms).
    pub status: Option<PresenceStatus>,
    /// Its text.
    pub text: Option<Arc<str>>,
    /// When the status was set (ms since the epoch; 0: never).
    pub status_at: i64,
    /// When their last connection on that node closed (ms since the epoch).
    pub last_seen: Option<i64>,
}

/// What one node asks the others (an operator's request that spans the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Your connections (`user`'s only, if given), oldest first, at most `limit`.
    Connections {
        /// Only this user's.
        user: Option<UserId>,
        /// Most to list.
        limit: u32,
    },
    /// Close this connection if it is yours.
    Close {
        /// The connection.
        conn: ConnId,
    },
}

/// One bus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// Messages one commit stored in `channel`, in seq order, with their delivery frames.
    Deliveries {
        /// Channel name.
        channel: Arc<str>,
        /// Its readers.
        audience: Audience,
        /// Seq and delivery frame of each message.
        items: Vec<(Seq, ByteString)>,
    },
    /// A frame for every connection of `users` (typing, receipts, connection events, state
    /// changes): not stored, so not sequenced.
    Frame {
        /// Recipients.
        users: Arc<[UserId]>,
        /// A user left out entirely.
        skip_user: Option<UserId>,
        /// A connection left out.
        skip_conn: Option<ConnId>,
        /// The frame.
        frame: ByteString,
    },
    /// Channels the sender committed to lately, with their last seq: a node that missed bus
    /// traffic fills what it lacks from the database.
    Heads(Vec<Head>),
    /// The sender lost the bus from `since_ms` (its clock): every node answers with the
    /// [`Envelope::Heads`] of what it committed since.
    Resync {
        /// Start of the gap, in milliseconds since the epoch.
        since_ms: i64,
    },
    /// A group's members changed: nodes running its channel load them again.
    MembersChanged {
        /// Channel name.
        channel: Arc<str>,
    },
    /// An operator closes this connection, wherever it is.
    CloseConnection {
        /// The connection.
        conn: ConnId,
    },
    /// Token ids were revoked: sessions holding one close with 4001.
    Revoked(Vec<Arc<str>>),
    /// The sender's presence notes: changes as they happen, or (a full account, in parts)
    /// every user online on it; `complete` ends a full account, after which a user of the
    /// sender's not in this `generation` is offline there.
    Presence {
        /// The sender's count of full accounts, carried by every note since the last.
        generation: u64,
        /// Ends a full account.
        complete: bool,
        /// The notes.
        notes: Vec<PresenceNote>,
    },
    /// The sender asks every node for a full account of its presence (it joined, or its
    /// subscription was lost).
    PresenceAsk,
    /// A question to every other node, answered with [`Envelope::Answer`].
    Ask {
        /// The asker's number for it.
        id: u64,
        /// The question.
        question: Question,
    },
    /// Frame-rate tokens users took on the sender since its last such message: every
    /// node takes them from its own buckets of those users.
    RateSpent(Vec<(UserId, u32)>),
    /// How many of their `max_connections_per_user` places the listed users hold on the
    /// sender now: those whose count changed since its last such message (0: none left),
    /// or, every third of `cluster.node_ttl`, every user holding one.
    Places(Vec<(UserId, u32)>),
    /// An answer to node `to`'s question `id`, as JSON.
    Answer {
        /// The question's number.
        id: u64,
        /// The asking node.
        to: Arc<str>,
        /// The answer.
        json: String,
    },
}

/// A bus message that is not an envelope of this version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad bus message: {0}")]
pub struct DecodeError(&'static str);

impl Envelope {
    /// The byte form, from node `node`.
    pub fn encode(&self, node: &str) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(self.size_hint() + node.len() + 8));
        w.0.extend_from_slice(MAGIC);
        w.str(node);
        match self {
            Envelope::Deliveries {
                channel,
                audience,
                items,
            } => {
                w.0.push(b'D');
                w.str(channel);
                w.audience(audience);
                w.len(items.len());
                for (seq, frame) in items {
                    w.u64(seq.get());
                    w.str(frame);
                }
            }
            Envelope::Frame {
                users,
                skip_user,
                skip_conn,
                frame,
            } => {
                w.0.push(b'F');
                w.users(users);
                w.str(skip_user.as_ref().map_or("", UserId::as_str));
                w.u64(skip_conn.map_or(0, |c| c.0));
                w.str(frame);
            }
            Envelope::Heads(heads) => {
                w.0.push(b'H');
                w.len(heads.len());
                for h in heads {
                    w.str(&h.channel);
                    w.audience(&h.audience);
                    w.u64(h.seq.get());
                }
            }
            Envelope::Resync { since_ms } => {
                w.0.push(b'R');
                w.u64(*since_ms as u64);
            }
            Envelope::MembersChanged { channel } => {
                w.0.push(b'M');
                w.str(channel);
            }
            Envelope::CloseConnection { conn } => {
                w.0.push(b'C');
                w.u64(conn.0);
            }
            Envelope::Revoked(jtis) => {
                w.0.push(b'V');
                w.len(jtis.len());
                for j in jtis {
                    w.str(j);
                }
            }
            Envelope::Presence {
                generation,
                complete,
                notes,
            } => {
                w.0.push(b'P');
                w.u64(*generation);
                w.0.push(u8::from(*complete));
                w.len(notes.len());
                for n in notes {
                    w.str(n.user.as_str());
                    w.0.push(u8::from(n.online));
                    w.0.push(status_code(n.status));
                    w.str(n.text.as_deref().unwrap_or(""));
                    w.u64(n.status_at as u64);
                    w.u64(n.last_seen.map_or(0, |t| t as u64));
                }
            }
            Envelope::PresenceAsk => w.0.push(b'A'),
            Envelope::Ask { id, question } => {
                w.0.push(b'Q');
                w.u64(*id);
                match question {
                    Question::Connections { user, limit } => {
                        w.0.push(b'l');
                        w.str(user.as_ref().map_or("", UserId::as_str));
                        w.len(*limit as usize);
                    }
                    Question::Close { conn } => {
                        w.0.push(b'c');
                        w.u64(conn.0);
                    }
                }
            }
            Envelope::RateSpent(spent) => {
                w.0.push(b'S');
                w.user_counts(spent);
            }
            Envelope::Places(places) => {
                w.0.push(b'U');
                w.user_counts(places);
            }
            Envelope::Answer { id, to, json } => {
                w.0.push(b'N');
                w.u64(*id);
                w.str(to);
                w.str(json);
            }
        }
        w.0
    }

    /// Reads a bus message: the sending node's id and the envelope.
    pub fn decode(bytes: &[u8]) -> Result<(&str, Envelope), DecodeError> {
        let mut r = Reader(bytes);
        if r.take(3)? != MAGIC {
            return Err(DecodeError("not a switchboard envelope"));
        }
        let node = r.str()?;
        let env = match r.u8()? {
            b'D' => {
                let channel = Arc::from(r.str()?);
                let audience = r.audience()?;
                let n = r.count(12)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let seq = Seq::new(r.u64()?);
                    items.push((seq, ByteString::from(r.str()?)));
                }
                Envelope::Deliveries {
                    channel,
                    audience,
                    items,
                }
            }
            b'F' => {
                let users = r.users()?;
                let skip_user = Some(r.str()?).filter(|u| !u.is_empty()).map(UserId::new);
                let skip_conn = Some(r.u64()?).filter(|c| *c != 0).map(ConnId);
                let frame = ByteString::from(r.str()?);
                Envelope::Frame {
                    users,
                    skip_user,
                    skip_conn,
                    frame,
                }
            }
            b'H' => {
                let n = r.count(13)?;
                let mut heads = Vec::with_capacity(n);
                for _ in 0..n {
                    let channel = Arc::from(r.str()?);
                    let audience = r.audience()?;
                    let seq = Seq::new(r.u64()?);
                    heads.push(Head {
                        channel,
                        audience,
                        seq,
                    });
                }
                Envelope::Heads(heads)
            }
            b'R' => Envelope::Resync {
                since_ms: r.u64()? as i64,
            },
            b'M' => Envelope::MembersChanged {
                channel: Arc::from(r.str()?),
            },
            b'C' => Envelope::CloseConnection {
                conn: ConnId(r.u64()?),
            },
            b'V' => {
                let n = r.count(4)?;
                let mut jtis = Vec::with_capacity(n);
                for _ in 0..n {
                    jtis.push(Arc::from(r.str()?));
                }
                Envelope::Revoked(jtis)
            }
            b'P' => {
                let generation = r.u64()?;
                let complete = r.u8()? != 0;
                // user, online, status, text, status_at, last_seen: 27 bytes at least.
                let n = r.count(27)?;
                let mut notes = Vec::with_capacity(n);
                for _ in 0..n {
                    let user = UserId::new(r.str()?);
                    let online = r.u8()? != 0;
                    let status = status_of(r.u8()?)?;
                    let text = Some(r.str()?).filter(|t| !t.is_empty()).map(Arc::from);
                    let status_at = r.u64()? as i64;
                    let last_seen = Some(r.u64()? as i64).filter(|t| *t != 0);
                    notes.push(PresenceNote {
                        user,
                        online,
                        status,
                        text,
                        status_at,
                        last_seen,
                    });
                }
                Envelope::Presence {
                    generation,
                    complete,
                    notes,
                }
            }
            b'A' => Envelope::PresenceAsk,
            b'Q' => {
                let id = r.u64()?;
                let question = match r.u8()? {
                    b'l' => Question::Connections {
                        user: Some(r.str()?).filter(|u| !u.is_empty()).map(UserId::new),
                        limit: r.u32()?,
                    },
                    b'c' => Question::Close {
                        conn: ConnId(r.u64()?),
                    },
                    _ => return Err(DecodeError("unknown question")),
                };
                Envelope::Ask { id, question }
            }
            b'S' => Envelope::RateSpent(r.user_counts()?),
            b'U' => Envelope::Places(r.user_counts()?),
            b'N' => Envelope::Answer {
                id: r.u64()?,
                to: Arc::from(r.str()?),
                json: r.str()?.to_owned(),
            },
            _ => return Err(DecodeError("unknown kind")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok((node, env))
    }

    fn size_hint(&self) -> usize {
        match self {
            Envelope::Deliveries { items, .. } => {
                64 + items.iter().map(|(_, f)| f.len() + 12).sum::<usize>()
            }
            Envelope::Frame { frame, users, .. } => 64 + frame.len() + users.len() * 16,
            Envelope::Heads(h) => 16 + h.len() * 48,
            _ => 64,
        }
    }
}

fn status_code(s: Option<PresenceStatus>) -> u8 {
    match s {
        None => 0,
        Some(PresenceStatus::Online) => 1,
        Some(PresenceStatus::Away) => 2,
        Some(PresenceStatus::Busy) => 3,
        Some(PresenceStatus::Invisible) => 4,
    }
}

fn status_of(code: u8) -> Result<Option<PresenceStatus>, DecodeError> {
    Ok(match code {
        0 => None,
        1 => Some(PresenceStatus::Online),
        2 => Some(PresenceStatus::Away),
        3 => Some(PresenceStatus::Busy),
        4 => Some(PresenceStatus::Invisible),
        _ => return Err(DecodeError("unknown presence status")),
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn len(&mut self, n: usize) {
        // Lengths beyond u32 never come from one frame or one commit (frames are limited
        // far below 4 GiB); saturate rather than wrap, which decoding then refuses.
        self.0
            .extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// Users each with a count (the count as a u32).
    fn user_counts(&mut self, list: &[(UserId, u32)]) {
        self.len(list.len());
        for (user, n) in list {
            self.str(user.as_str());
            self.len(*n as usize);
        }
    }

    fn users(&mut self, users: &[UserId]) {
        self.len(users.len());
        for u in users {
            self.str(u.as_str());
        }
    }

    fn audience(&mut self, a: &Audience) {
        match a {
            Audience::Users(users) => {
                self.0.push(b'u');
                self.users(users);
            }
            Audience::Members => self.0.push(b'm'),
            Audience::Subscribers => self.0.push(b's'),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A list written by [`Writer::user_counts`].
    fn user_counts(&mut self) -> Result<Vec<(UserId, u32)>, DecodeError> {
        let n = self.count(8)?;
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let user = UserId::new(self.str()?);
            list.push((user, self.u32()?));
        }
        Ok(list)
    }

    /// A list length, refused when the bytes left cannot hold that many items of at least
    /// `min_item` bytes (a forged count allocates nothing).
    fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.0.len() {
            return Err(DecodeError("count beyond the message"));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError("not UTF-8"))
    }

    fn users(&mut self) -> Result<Arc<[UserId]>, DecodeError> {
        let n = self.count(4)?;
        let mut users = Vec::with_capacity(n);
        for _ in 0..n {
            users.push(UserId::new(self.str()?));
        }
        Ok(Arc::from(users))
    }

    fn audience(&mut self) -> Result<Audience, DecodeError> {
        Ok(match self.u8()? {
            b'u' => Audience::Users(self.users()?),
            b'm' => Audience::Members,
            b's' => Audience::Subscribers,
            _ => return Err(DecodeError("unknown audience")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(names: &[&str]) -> Arc<[UserId]> {
        names.iter().map(|n| UserId::new(n)).collect()
    }

    fn round_trip(env: Envelope) {
        let bytes = env.encode("node-a");
        let (node, back) = Envelope::decode(&bytes).expect("decodes");
        assert_eq!(node, "node-a");
        assert_eq!(back, env);
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        round_trip(Envelope::Deliveries {
            channel: Arc::from("dm:alice:bob"),
            audience: Audience::Users(users(&["alice", "bob"])),
            items: vec![
                (
                    Seq::new(7),
                    ByteString::from(r#"{"type":"message","x":"é\""}"#),
                ),
                (Seq::new(8), ByteString::from("{}")),
            ],
        });
        round_trip(Envelope::Deliveries {
            channel: Arc::from("group:g"),
            audience: Audience::Members,
            items: vec![],
        });
        round_trip(Envelope::Frame {
            users: users(&["bob"]),
            skip_user: Some(UserId::new("alice")),
            skip_conn: Some(ConnId(1 << 40 | 3)),
            frame: ByteString::from(r#"{"type":"typing_indicator"}"#),
        });
        round_trip(Envelope::Frame {
            users: users(&[]),
            skip_user: None,
            skip_conn: None,
            frame: ByteString::from(""),
        });
        round_trip(Envelope::Heads(vec![
            Head {
                channel: Arc::from("broadcast:news"),
                audience: Audience::Subscribers,
                seq: Seq::new(u64::MAX >> 1),
            },
            Head {
                channel: Arc::from("user:carol"),
                audience: Audience::Users(users(&["carol"])),
                seq: Seq::new(1),
            },
        ]));
        round_trip(Envelope::Resync {
            since_ms: 1_700_000_000_000,
        });
        round_trip(Envelope::MembersChanged {
            channel: Arc::from("group:g"),
        });
        round_trip(Envelope::CloseConnection { conn: ConnId(42) });
        round_trip(Envelope::Revoked(vec![Arc::from("j1"), Arc::from("j2")]));
        round_trip(Envelope::Presence {
            generation: 3,
            complete: true,
            notes: vec![
                PresenceNote {
                    user: UserId::new("alice"),
                    online: true,
                    status: Some(PresenceStatus::Away),
                    text: Some(Arc::from("lunch")),
                    status_at: 1_700_000_000_001,
                    last_seen: None,
                },
                PresenceNote {
                    user: UserId::new("b"),
                    online: false,
                    status: None,
                    text: None,
                    status_at: 0,
                    last_seen: Some(1_700_000_000_002),
                },
            ],
        });
        round_trip(Envelope::PresenceAsk);
        round_trip(Envelope::RateSpent(vec![
            (UserId::new("a"), 3),
            (UserId::new("bob"), 70_000),
        ]));
        round_trip(Envelope::Places(vec![
            (UserId::new("alice"), 0),
            (UserId::new("bob"), 2),
        ]));
        round_trip(Envelope::Ask {
            id: 9,
            question: Question::Connections {
                user: Some(UserId::new("alice")),
                limit: 100,
            },
        });
        round_trip(Envelope::Ask {
            id: 10,
            question: Question::Connections {
                user: None,
                limit: 1,
            },
        });
        round_trip(Envelope::Ask {
            id: 11,
            question: Question::Close { conn: ConnId(77) },
        });
        round_trip(Envelope::Answer {
            id: 11,
            to: Arc::from("node-a"),
            json: r#"{"closed":null}"#.into(),
        });
    }

    #[test]
    fn foreign_truncated_or_forged_messages_are_refused() {
        let good = Envelope::Heads(vec![Head {
            channel: Arc::from("dm:a:b"),
            audience: Audience::Members,
            seq: Seq::new(3),
        }])
        .encode("n");
        assert!(Envelope::decode(b"hello").is_err());
        assert!(Envelope::decode(&good[..good.len() - 1]).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(Envelope::decode(&longer).is_err());
        // A count of four billion heads in a short message allocates nothing.
        let mut forged = b"SB1".to_vec();
        forged.extend_from_slice(&1u32.to_le_bytes());
        forged.push(b'n');
        forged.push(b'H');
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Envelope::decode(&forged),
            Err(DecodeError("count beyond the message"))
        );
    }
}
