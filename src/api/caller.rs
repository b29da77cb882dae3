//! Who is calling: set by the auth middleware as a request extension, read by every handler
//! that scopes data to a key (sessions, feedback).

/// The authenticated caller. `key_id` is a stable hash of the API key (never the key itself);
/// None when the server runs without keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Option<String>,
}
