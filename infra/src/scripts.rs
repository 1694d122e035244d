//! The event store's Lua: each script runs with `lua/lib.lua` in front of it, the one place
//! where an event is appended, a feed told, Redis' clock read and a GCRA budget charged.

use redis::Script;

/// The shared functions, as put in front of every script.
pub const LIBRARY: &str = include_str!("lua/lib.lua");

/// `body` with the library in front of it.
pub fn with_library(body: &str) -> Script {
    Script::new(&format!("{LIBRARY}\n{body}"))
}
