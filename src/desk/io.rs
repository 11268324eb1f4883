//! What goes into the desk ([`Event`]) and what comes out ([`Action`]):
//! the whole vocabulary between the pure core and the Matrix edge.

use crate::intake::Case;
use crate::outcome::OutcomeRecord;

/// Something that happened, as the desk sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The bot is in a new, encrypted visitor room: start the intake.
    Opened { key: String, case_id: String, record_id: String },
    /// A message from the visitor of a case.
    Visitor { key: String, input: VisitorInput },
    /// The visitor left the room.
    VisitorLeft { key: String },
    /// Someone besides the visitor, the bot and counsellors was invited,
    /// knocked or joined: the chat is no longer one-to-one.
    Intruder { key: String },
    /// A configured counsellor joined a case room.
    CounsellorJoined { key: String, user: String },
    /// A configured counsellor left a case room or declined its invite.
    CounsellorLeft { key: String, user: String },
    /// Text from a configured counsellor in a case room.
    CounsellorText { key: String, user: String, text: String },
    /// Text in the staff room.
    Staff { user: String, text: String },
    /// The homeserver took the intake summary for a case's counsellor.
    SummaryPosted { key: String },
    /// Time passed.
    Tick,
}

impl Event {
    /// The kind of event, for logs (never its content).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Opened { .. } => "opened",
            Event::Visitor { input: VisitorInput::Text(_), .. } => "visitor_text",
            Event::Visitor { input: VisitorInput::NonText, .. } => "visitor_non_text",
            Event::Visitor { input: VisitorInput::Undecryptable, .. } => "visitor_undecryptable",
            Event::VisitorLeft { .. } => "visitor_left",
            Event::Intruder { .. } => "intruder",
            Event::CounsellorJoined { .. } => "counsellor_joined",
            Event::CounsellorLeft { .. } => "counsellor_left",
            Event::CounsellorText { .. } => "counsellor_text",
            Event::Staff { .. } => "staff_text",
            Event::SummaryPosted { .. } => "summary_posted",
            Event::Tick => "tick",
        }
    }

    /// The case key the event is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Event::Opened { key, .. }
            | Event::Visitor { key, .. }
            | Event::VisitorLeft { key }
            | Event::Intruder { key }
            | Event::CounsellorJoined { key, .. }
            | Event::CounsellorLeft { key, .. }
            | Event::CounsellorText { key, .. }
            | Event::SummaryPosted { key } => Some(key),
            Event::Staff { .. } | Event::Tick => None,
        }
    }
}

/// An owned [`crate::intake::Input`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisitorInput {
    Text(String),
    NonText,
    Undecryptable,
}

/// What the edge must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a notice to the case room.
    Say {
        key: String,
        text: String,
    },
    /// Send a notice to the counsellor in a case room that is no longer
    /// one-to-one: the one message that goes out with a stranger present
    /// (its text says nothing about the case).
    Warn {
        key: String,
        text: String,
    },
    /// Send the intake summary (plain and HTML) to the case room.
    Brief {
        key: String,
        text: String,
        html: String,
    },
    /// Send a notice to the staff room.
    Staff {
        text: String,
    },
    Invite {
        key: String,
        user: String,
    },
    /// Withdraw an invite or remove a counsellor from a case room.
    Withdraw {
        key: String,
        user: String,
    },
    /// Persist the case's in-progress state.
    SaveCase {
        key: String,
    },
    /// Persist the routing state.
    SaveRouter,
    /// Write the outcome record and flush (before the goodbye goes out).
    /// `case_id` is for the log; the record carries only its own id.
    Record {
        case_id: String,
        record: OutcomeRecord,
    },
    /// Persist a case that is being closed (its goodbye may not be sent yet).
    MarkClosing {
        key: String,
        case: Box<Case>,
    },
    /// Delete the in-progress state.
    DeleteCase {
        key: String,
    },
    /// Leave and forget the room (and purge it, where configured).
    Leave {
        key: String,
        case_id: String,
    },
}
