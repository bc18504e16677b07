//! The responses a backend still owes for what the client sent, in order.
//!
//! The proxy sometimes answers a message itself (a `Parse` of a statement the backend already
//! has, a `Close` of a statement it keeps cached) and sometimes sends a message the client
//! never wrote (a re-`Parse` before a `Bind`). To keep the response stream in the order the
//! client expects, every message that earns a response gets an [`Expect`] here; synthesized
//! answers are released only when they reach the head of the queue, and answers to injected
//! messages are swallowed. An `ErrorResponse` in the extended protocol discards everything up
//! to the next `Sync`, exactly as PostgreSQL does.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::frontend::classify::Effect;
use crate::protocol::{ClientError, message};

/// One response the proxy is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// `ParseComplete`; `name` is the proxy name to forget if the parse fails.
    Parse {
        /// Proxy-unique statement name, if named.
        name: Option<String>,
        /// Injected by the proxy: swallow the response.
        hidden: bool,
    },
    /// `BindComplete`.
    Bind,
    /// `RowDescription` or `NoData`.
    Describe,
    /// `CommandComplete`, `EmptyQueryResponse` or `PortalSuspended`.
    Execute,
    /// An `Execute` of a statement with a session effect, reported once its batch is over.
    ExecuteEffect(Effect),
    /// `CloseComplete`.
    Close,
    /// `CloseComplete` of a `Close` the proxy sent: swallowed.
    HiddenClose,
    /// `ReadyForQuery` after a `Sync`.
    Sync,
    /// `ReadyForQuery` after a simple `Query` or `FunctionCall`; the effect is reported once
    /// the statement's `CommandComplete` arrives.
    Query(Effect),
    /// The proxy answers `ParseComplete` itself.
    FakeParseComplete,
    /// The proxy answers `CloseComplete` itself.
    FakeCloseComplete,
    /// A refused statement, replaced by one that fails to parse; the backend's
    /// `ErrorResponse` (which aborts a transaction block, as the refusal must) is replaced
    /// by `error`. `simple` for a `Query`, which then still owes its `ReadyForQuery`.
    Refused {
        /// What the client is told.
        error: ClientError,
        /// A simple `Query` rather than a `Parse`.
        simple: bool,
    },
}

/// Something the session must act on after a backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A statement with a session effect completed successfully; `status` is the
    /// transaction status after it (`T` or `E` means a later ROLLBACK could undo it).
    Completed {
        /// The effect.
        effect: Effect,
        /// `ReadyForQuery` status that followed.
        status: u8,
    },
    /// A `Parse` under this proxy name failed: the backend does not have it.
    ParseFailed(String),
    /// An unnamed `Parse` failed or was skipped: the backend's unnamed statement is unknown.
    UnnamedParseFailed,
    /// The backend's error for a refused statement was dropped: send the client this one.
    Refused(ClientError),
}

/// The backend sent something that does not fit what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend sent {tag:?} while the proxy expected {expected}")]
pub struct Desync {
    /// Tag received.
    pub tag: char,
    /// What was at the head of the queue.
    pub expected: String,
}

/// Per-binding response tracking.
#[derive(Debug, Default)]
pub struct Pipeline {
    queue: VecDeque<Expect>,
    open_batch: bool,
    /// The backend is in COPY FROM STDIN: it ignores `Sync` until `CopyDone`/`CopyFail`.
    copy_in: bool,
    /// Effects of statements that completed since the last `ReadyForQuery`; reported with
    /// its status, dropped if an error rolls the implicit transaction back.
    completed: Vec<Effect>,
    /// An error arrived before the client's `Sync`: the backend ignores everything until it.
    skipping: bool,
    /// The session effect of executing the unnamed portal, if its statement has one.
    pub portal_effect: Option<Effect>,
    /// Status byte of the last `ReadyForQuery`.
    pub status: Option<u8>,
}

impl Pipeline {
    /// Records a message sent (or answered by the proxy).
    pub fn push(&mut self, expect: Expect, out: &mut BytesMut) {
        // Whatever status the backend last reported, it is not idle for this request.
        self.status = None;
        if self.skipping {
            if expect != Expect::Sync {
                return;
            }
            self.skipping = false;
        }

        match expect {
            Expect::Sync | Expect::Query(_) | Expect::Refused { simple: true, .. } => {
                self.open_batch = false
            }
            _ => self.open_batch = true,
        }
        self.queue.push_back(expect);
        self.release_fakes(out);
    }

    /// Empties the pipeline for a new binding, keeping its allocation.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.open_batch = false;
        self.copy_in = false;
        self.completed.clear();
        self.skipping = false;
        self.portal_effect = None;
        self.status = None;
    }

    /// Whether the backend is skipping messages up to the client's next `Sync`, so client
    /// messages until then need no translation and earn no response.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Marks an extended-protocol message that earns no response (`Flush`, COPY data).
    pub fn touch_batch(&mut self) {
        self.open_batch = true;
    }

    /// Whether a client `Sync` now would be read by the backend inside COPY FROM STDIN.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// The client sent `CopyDone` or `CopyFail`: the next `Sync` earns a `ReadyForQuery`.
    pub fn copy_in_ended(&mut self) {
        self.copy_in = false;
    }

    /// True when the backend owes nothing, no extended batch is open, and it is not
    /// skipping messages while waiting for a `Sync`.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.open_batch && !self.skipping
    }

    /// Handles one backend frame. Returns whether to forward it to the client; synthesized
    /// answers that become due are appended to `out` after it.
    pub fn on_backend(&mut self, frame: &[u8], events: &mut Vec<Event>) -> Result<bool, Desync> {
        let tag = frame.first().copied().unwrap_or(0);
        match tag {
            b'1' => self.complete_parse(tag),
            b'2' => self.pop_if(tag, |e| *e == Expect::Bind),
            b'3' => self.complete_close(tag),
            b'n' => self.pop_if(tag, |e| *e == Expect::Describe),
            b'T' => self.row_description(),
            b's' => self.pop_if(tag, |e| {
                matches!(e, Expect::Execute | Expect::ExecuteEffect(_))
            }),
            b'C' | b'I' => self.command_complete(tag),
            b'Z' => self.ready(frame, events),
            b'E' => {
                self.copy_in = false;
                let refused = self.take_refusal(events);
                self.error(events);
                Ok(!refused)
            }
            b'G' => {
                self.start_copy_in();
                Ok(true)
            }
            b't' | b'D' | b'H' | b'W' | b'd' | b'c' | b'N' | b'A' | b'S' | b'V' => Ok(true),
            _ => Err(self.desync(tag)),
        }
    }

    /// Appends every synthesized answer now at the head of the queue.
    pub fn release_fakes(&mut self, out: &mut BytesMut) {
        loop {
            match self.queue.front() {
                Some(Expect::FakeParseComplete) => message::put_parse_complete(out),
                Some(Expect::FakeCloseComplete) => message::put_close_complete(out),
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    /// `CopyInResponse`: `Sync`s queued behind the COPY's `Execute` reach the backend in copy
    /// mode and earn nothing (clients send `CopyDone` only after seeing this message).
    fn start_copy_in(&mut self) {
        self.copy_in = true;
        let mut first = true;
        self.queue.retain(|e| {
            let keep = first || *e != Expect::Sync;
            first = false;
            keep
        });
    }

    fn desync(&self, tag: u8) -> Desync {
        Desync {
            tag: tag as char,
            expected: format!("{:?}", self.queue.front()),
        }
    }

    fn pop_if(&mut self, tag: u8, matches: impl Fn(&Expect) -> bool) -> Result<bool, Desync> {
        if !self.queue.front().is_some_and(matches) {
            return Err(self.desync(tag));
        }
        self.queue.pop_front();
        Ok(true)
    }

    fn complete_parse(&mut self, tag: u8) -> Result<bool, Desync> {
        match self.queue.front() {
            Some(Expect::Parse { hidden, .. }) => {
                let forward = !*hidden;
                self.queue.pop_front();
                Ok(forward)
            }
            _ => Err(self.desync(tag)),
        }
    }

    fn complete_close(&mut self, tag: u8) -> Result<bool, Desync> {
        match self.queue.front() {
            Some(Expect::Close) => {
                self.queue.pop_front();
                Ok(true)
            }
            Some(Expect::HiddenClose) => {
                self.queue.pop_front();
                Ok(false)
            }
            _ => Err(self.desync(tag)),
        }
    }

    /// `RowDescription` ends a `Describe`, or starts the rows of an `Execute` or `Query`.
    fn row_description(&mut self) -> Result<bool, Desync> {
        match self.queue.front() {
            Some(Expect::Describe) => {
                self.queue.pop_front();
                Ok(true)
            }
            Some(Expect::Execute | Expect::ExecuteEffect(_) | Expect::Query(_)) => Ok(true),
            _ => Err(self.desync(b'T')),
        }
    }

    fn command_complete(&mut self, tag: u8) -> Result<bool, Desync> {
        match self.queue.front_mut() {
            Some(Expect::Execute) => {
                self.queue.pop_front();
                Ok(true)
            }
            Some(Expect::ExecuteEffect(_)) => {
                if let Some(Expect::ExecuteEffect(effect)) = self.queue.pop_front() {
                    self.completed.push(effect);
                }
                Ok(true)
            }
            Some(Expect::Query(effect)) => {
                let effect = std::mem::replace(effect, Effect::None);
                if effect != Effect::None {
                    self.completed.push(effect);
                }
                Ok(true)
            }
            _ => Err(self.desync(tag)),
        }
    }

    fn ready(&mut self, frame: &[u8], events: &mut Vec<Event>) -> Result<bool, Desync> {
        let status = message::ready_status(frame).map_err(|_| self.desync(b'Z'))?;
        match self.queue.front() {
            Some(Expect::Sync | Expect::Query(_)) => {
                self.queue.pop_front();
                self.status = Some(status);
                for effect in self.completed.drain(..) {
                    events.push(Event::Completed { effect, status });
                }
                Ok(true)
            }
            _ => Err(self.desync(b'Z')),
        }
    }

    /// When the error answers a refused statement, reports the refusal in its place and
    /// leaves the queue as a failed `Query` or `Parse` would.
    fn take_refusal(&mut self, events: &mut Vec<Event>) -> bool {
        let Some(Expect::Refused { error, simple }) = self.queue.front() else {
            return false;
        };
        events.push(Event::Refused(error.clone()));
        if *simple {
            self.queue[0] = Expect::Query(Effect::None);
        } else {
            self.queue[0] = Expect::Parse {
                name: None,
                hidden: true,
            };
        }
        true
    }

    /// After an error PostgreSQL skips to the next `Sync`; so does the queue.
    fn error(&mut self, events: &mut Vec<Event>) {
        if matches!(self.queue.front(), Some(Expect::Query(_))) {
            if let Some(Expect::Query(effect)) = self.queue.front_mut() {
                *effect = Effect::None;
            }
            self.completed.clear();
            return;
        }

        self.completed.clear();
        while let Some(head) = self.queue.front() {
            if *head == Expect::Sync {
                return;
            }
            match self.queue.pop_front() {
                Some(Expect::Parse {
                    name: Some(name), ..
                }) => {
                    events.push(Event::ParseFailed(name));
                }
                Some(Expect::Parse { name: None, .. }) => events.push(Event::UnnamedParseFailed),
                _ => {}
            }
        }
        // No Sync sent yet: the backend now ignores everything up to the client's next one.
        self.skipping = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn fake_parse_complete_waits_for_earlier_responses() {
        let mut p = Pipeline::default();
        let mut out = BytesMut::new();
        let mut ev = Vec::new();

        p.push(Expect::Bind, &mut out);
        p.push(Expect::FakeParseComplete, &mut out);
        assert!(out.is_empty(), "fake must wait behind the Bind");

        assert_eq!(p.on_backend(&frame(b'2', b""), &mut ev), Ok(true));
        p.release_fakes(&mut out);
        assert_eq!(&out[..], b"1\0\0\0\x04");
    }

    #[test]
    fn hidden_parse_response_is_swallowed() {
        let mut p = Pipeline::default();
        let mut out = BytesMut::new();
        let hidden = Expect::Parse {
            name: Some("pgt_1".into()),
            hidden: true,
        };
        p.push(hidden, &mut out);
        assert_eq!(p.on_backend(&frame(b'1', b""), &mut Vec::new()), Ok(false));
    }

    #[test]
    fn error_skips_to_sync_and_reports_failed_parse() {
        let mut p = Pipeline::default();
        let mut out = BytesMut::new();
        let mut ev = Vec::new();
        let parse = Expect::Parse {
            name: Some("pgt_1".into()),
            hidden: false,
        };
        for e in [parse, Expect::Bind, Expect::Execute, Expect::Sync] {
            p.push(e, &mut out);
        }

        assert_eq!(p.on_backend(&frame(b'E', b"\0"), &mut ev), Ok(true));
        assert_eq!(ev, vec![Event::ParseFailed("pgt_1".into())]);
        assert!(!p.is_idle());
        assert_eq!(p.on_backend(&frame(b'Z', b"I"), &mut ev), Ok(true));
        assert!(p.is_idle());
    }

    #[test]
    fn query_effect_reported_on_command_complete() {
        let mut p = Pipeline::default();
        let mut out = BytesMut::new();
        let mut ev = Vec::new();
        p.push(Expect::Query(Effect::DiscardAll), &mut out);

        p.on_backend(&frame(b'C', b"DISCARD ALL\0"), &mut ev)
            .expect("fits");
        assert!(ev.is_empty(), "reported only with the transaction status");
        p.on_backend(&frame(b'Z', b"I"), &mut ev).expect("fits");
        let done = Event::Completed {
            effect: Effect::DiscardAll,
            status: b'I',
        };
        assert_eq!(ev, vec![done]);
    }

    #[test]
    fn refusal_replaces_the_backend_error_and_ends_the_query() {
        let mut p = Pipeline::default();
        let mut out = BytesMut::new();
        let mut ev = Vec::new();
        let error = ClientError::error(crate::protocol::ErrorKind::Client, "42501", "no");
        let refused = Expect::Refused {
            error: error.clone(),
            simple: true,
        };
        p.push(refused, &mut out);

        assert_eq!(p.on_backend(&frame(b'E', b"\0"), &mut ev), Ok(false));
        assert_eq!(ev, vec![Event::Refused(error)]);
        assert_eq!(p.on_backend(&frame(b'Z', b"I"), &mut ev), Ok(true));
        assert!(p.is_idle());
    }

    #[test]
    fn unexpected_message_is_a_desync() {
        let mut p = Pipeline::default();
        assert!(p.on_backend(&frame(b'2', b""), &mut Vec::new()).is_err());
    }
}
