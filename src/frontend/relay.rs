//! Translating one client message for the bound backend.
//!
//! Most frames go through as the bytes that arrived. Named prepared statements are the
//! exception: a client's statement name maps to a proxy-unique name derived from the SQL
//! text and parameter types, so the same statement prepared by many clients exists once per
//! backend. A `Parse` the backend already has is answered by the proxy; a `Bind` or
//! `Describe` of a statement the backend lacks is preceded by a hidden re-`Parse`; a `Close`
//! of a statement only forgets the client's name and leaves the backend's cache alone.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use super::classify::{self, Effect};
use super::guard;
use crate::backend::BackendConn;
use crate::backend::pipeline::{Expect, Pipeline};
pub use crate::backend::statement::Statement;
use crate::protocol::ClientError;
use crate::protocol::message::{self, BodyError};

/// Client statement name → statement.
pub type Statements = HashMap<Vec<u8>, Arc<Statement>>;

/// What the session should do after relaying a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// The client sent `Terminate`.
    Terminate,
    /// The message pins the client to this backend for the rest of its session.
    Pin(&'static str),
}

/// Where a relayed message goes.
pub struct Relay<'a> {
    /// The bound backend.
    pub conn: &'a mut BackendConn,
    /// Its response tracking.
    pub pipeline: &'a mut Pipeline,
    /// The client's named statements.
    pub statements: &'a mut Statements,
    /// The client's unnamed statement, if it has one.
    pub unnamed: &'a mut Option<Arc<Statement>>,
    /// Bytes for the backend.
    pub to_backend: &'a mut BytesMut,
    /// Bytes for the client (synthesized answers).
    pub to_client: &'a mut BytesMut,
    /// The tenant whose namespace [`guard`] keeps the client in.
    pub tenant: &'a str,
}

impl Relay<'_> {
    /// Relays one complete client frame.
    pub fn frame(&mut self, frame: &[u8]) -> Result<Flow, BodyError> {
        let tag = frame.first().copied().unwrap_or(0);
        if self.pipeline.skipping() && !matches!(tag, b'S' | b'X') {
            return Ok(self.forward(frame, None));
        }

        match tag {
            b'Q' => self.query(frame),
            b'P' => self.parse(frame),
            b'B' => self.bind(frame),
            b'D' => self.describe(frame),
            b'C' => self.close(frame),
            b'E' => self.execute(frame),
            b'S' if self.pipeline.in_copy_in() => {
                self.pipeline.touch_batch();
                Ok(self.forward(frame, None))
            }
            b'S' => Ok(self.forward(frame, Some(Expect::Sync))),
            b'c' | b'f' => {
                self.pipeline.copy_in_ended();
                Ok(self.forward(frame, None))
            }
            b'F' => {
                // A fast-path call can reach any function, set_config or advisory locks
                // included, and its effect cannot be read from the call.
                self.forward(frame, Some(Expect::Query(Effect::None)));
                Ok(Flow::Pin("FunctionCall"))
            }
            b'H' | b'd' => Ok(self.forward(frame, None)),
            b'X' => Ok(Flow::Terminate),
            _ => Err(BodyError { tag: tag as char }),
        }
    }

    /// Records a response owed for something already written to the backend.
    fn expect(&mut self, expect: Expect) -> Flow {
        self.pipeline.push(expect, self.to_client);
        Flow::Continue
    }

    fn forward(&mut self, frame: &[u8], expect: Option<Expect>) -> Flow {
        self.to_backend.extend_from_slice(frame);
        if let Some(expect) = expect {
            self.pipeline.push(expect, self.to_client);
        }
        Flow::Continue
    }

    fn query(&mut self, frame: &[u8]) -> Result<Flow, BodyError> {
        let text = message::query_text(frame)?;

        // A simple query destroys the unnamed statement, on the client's side as on ours.
        *self.unnamed = None;
        self.conn.unnamed = None;

        let sql = classify::sql_text(text);
        let checked = classify::classify_checked(&sql, |text, words| {
            guard::check_statement(text, words, self.tenant)
        });
        let effect = match checked {
            Ok(effect) => effect,
            Err(error) => {
                note_refusal(&error);
                message::put_query(self.to_backend, REFUSED_SQL);
                return Ok(self.expect(Expect::Refused {
                    error,
                    simple: true,
                }));
            }
        };

        match effect {
            Effect::Pin(reason) => {
                self.forward(frame, Some(Expect::Query(Effect::None)));
                Ok(Flow::Pin(reason))
            }
            effect => Ok(self.forward(frame, Some(Expect::Query(effect)))),
        }
    }

    fn parse(&mut self, frame: &[u8]) -> Result<Flow, BodyError> {
        let parse = message::parse(frame)?;
        let sql = classify::sql_text(parse.query);
        let checked = classify::classify_checked(&sql, |text, words| {
            guard::check_statement(text, words, self.tenant)
        });
        let effect = match checked {
            Ok(effect) => effect,
            Err(error) => return Ok(self.refuse_parse(parse.name, error)),
        };
        Ok(self.parse_statement(frame, parse, effect))
    }

    /// Parses a statement that fails in place of a refused one: as after a failed `Parse`,
    /// no statement of that name exists and the backend skips to the client's `Sync`. The
    /// failing statement takes the unnamed slot, so the backend's unnamed one is gone.
    fn refuse_parse(&mut self, name: &[u8], error: ClientError) -> Flow {
        note_refusal(&error);
        if name.is_empty() {
            *self.unnamed = None;
        } else {
            self.statements.remove(name);
        }
        self.conn.unnamed = None;

        message::put_parse(self.to_backend, b"", REFUSED_SQL.as_bytes(), &[0, 0]);
        self.expect(Expect::Refused {
            error,
            simple: false,
        })
    }

    /// Records a client's `Parse` and sends it on.
    fn parse_statement(&mut self, frame: &[u8], parse: message::Parse<'_>, effect: Effect) -> Flow {
        let (flow, effect) = match effect {
            Effect::Pin(reason) => (Flow::Pin(reason), Effect::None),
            Effect::None => (Flow::Continue, Effect::None),
            _ if !parse.name.is_empty() => {
                let reason = "session change through a named prepared statement";
                (Flow::Pin(reason), Effect::None)
            }
            effect => (Flow::Continue, effect),
        };

        if parse.name.is_empty() {
            let statement = Statement::unnamed(parse.query, parse.param_types, effect);
            let statement = Arc::new(statement);
            *self.unnamed = Some(statement.clone());
            self.conn.unnamed = Some(statement);

            let expect = Expect::Parse {
                name: None,
                hidden: false,
            };
            self.forward(frame, Some(expect));
            return flow;
        }

        let statement = Arc::new(Statement::new(parse.query, parse.param_types));
        self.statements
            .insert(parse.name.to_vec(), statement.clone());

        if self.conn.prepared.contains(&statement.proxy_name) {
            self.pipeline
                .push(Expect::FakeParseComplete, self.to_client);
        } else {
            self.send_parse(&statement, false);
        }
        flow
    }

    /// Sends a `Parse` under the proxy name and records it as prepared on this backend.
    fn send_parse(&mut self, statement: &Statement, hidden: bool) {
        let name = statement.proxy_name.as_bytes();
        message::put_parse(
            self.to_backend,
            name,
            &statement.query,
            &statement.param_types,
        );
        self.conn.prepared.insert(statement.proxy_name.clone());

        let expect = Expect::Parse {
            name: Some(statement.proxy_name.clone()),
            hidden,
        };
        self.pipeline.push(expect, self.to_client);
    }

    /// Makes sure the backend has the client's statement; returns it, if the name is known.
    fn ensure(&mut self, client_name: &[u8]) -> Option<Arc<Statement>> {
        let statement = self.statements.get(client_name)?.clone();
        if !self.conn.prepared.contains(&statement.proxy_name) {
            self.send_parse(&statement, true);
        }
        Some(statement)
    }

    /// Makes the backend's unnamed statement the client's own: a statement parsed in an
    /// earlier transaction may have run on another backend, or this backend may hold
    /// another client's.
    fn ensure_unnamed(&mut self) {
        let same = match (&*self.unnamed, &self.conn.unnamed) {
            (Some(mine), Some(theirs)) => Arc::ptr_eq(mine, theirs),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }

        match self.unnamed.clone() {
            Some(statement) => {
                message::put_parse(
                    self.to_backend,
                    b"",
                    &statement.query,
                    &statement.param_types,
                );
                let expect = Expect::Parse {
                    name: None,
                    hidden: true,
                };
                self.pipeline.push(expect, self.to_client);
                self.conn.unnamed = Some(statement);
            }
            None => {
                message::put_target(self.to_backend, b'C', b'S', b"");
                self.pipeline.push(Expect::HiddenClose, self.to_client);
                self.conn.unnamed = None;
            }
        }
    }

    fn bind(&mut self, frame: &[u8]) -> Result<Flow, BodyError> {
        let bind = message::bind(frame)?;
        let mut flow = Flow::Continue;
        let statement = match bind.statement {
            [] => {
                self.ensure_unnamed();
                flow = self.bind_effect(bind.portal);
                None
            }
            name => self.ensure(name),
        };

        match statement {
            Some(s) => {
                let name = s.proxy_name.as_bytes();
                message::put_bind(self.to_backend, bind.portal, name, bind.rest);
                self.pipeline.push(Expect::Bind, self.to_client);
            }
            None => {
                self.forward(frame, Some(Expect::Bind));
            }
        }
        Ok(flow)
    }

    /// Carries the unnamed statement's session effect to the portal bound from it. Only the
    /// unnamed portal can be followed; binding such a statement to a named portal pins.
    fn bind_effect(&mut self, portal: &[u8]) -> Flow {
        let effect = self
            .unnamed
            .as_ref()
            .map(|s| s.effect.clone())
            .filter(|e| *e != Effect::None);
        self.pipeline.portal_effect = None;

        let Some(effect) = effect else {
            return Flow::Continue;
        };
        if !portal.is_empty() {
            return Flow::Pin("session change bound to a named portal");
        }
        self.pipeline.portal_effect = Some(effect);
        Flow::Continue
    }

    fn execute(&mut self, frame: &[u8]) -> Result<Flow, BodyError> {
        let portal = message::execute_portal(frame)?;
        let expect = match (portal, self.pipeline.portal_effect.take()) {
            ([], Some(effect)) => Expect::ExecuteEffect(effect),
            _ => Expect::Execute,
        };
        Ok(self.forward(frame, Some(expect)))
    }

    fn describe(&mut self, frame: &[u8]) -> Result<Flow, BodyError> {
        let target = message::target(frame)?;
        let statement = match (target.kind, target.name) {
            (b'S', []) => {
                self.ensure_unnamed();
                None
            }
            (b'S', name) => self.ensure(name),
            _ => None,
        };

        match statement {
            Some(s) => {
                message::put_target(self.to_backend, b'D', b'S', s.proxy_name.as_bytes());
                self.pipeline.push(Expect::Describe, self.to_client);
                Ok(Flow::Continue)
            }
            None => Ok(self.forward(frame, Some(Expect::Describe))),
        }
    }

    fn close(&mut self, frame: &[u8]) -> Result<Flow, BodyError> {
        let target = message::target(frame)?;
        if target.kind == b'S' && !target.name.is_empty() {
            self.statements.remove(target.name);
            self.pipeline
                .push(Expect::FakeCloseComplete, self.to_client);
            return Ok(Flow::Continue);
        }
        Ok(self.forward(frame, Some(Expect::Close)))
    }
}

/// Sent in place of a statement the guard refused: it fails to parse, so the backend treats
/// it as PostgreSQL treats any failed statement (a transaction block is aborted, the rest of
/// an extended batch is skipped), and its error is replaced by the refusal.
const REFUSED_SQL: &str = "pgtenant refused this statement";

/// Logs and counts a refusal.
fn note_refusal(error: &ClientError) {
    tracing::info!(error = %error.message, "statement refused");
    crate::metrics::error(error.kind);
}
