//! The event store's Lua: each script runs with `lua/lib.lua` in front of it, the one place
//! where an event is appended, a feed told, Redis' clock read and a GCRA budget charged.

use redis::Script;

/// The shared functions, as put in front of every script.
pub const LIBRARY: &str = include_str!("lua/lib.lua");

/// `body` with the library in front of it.
pub fn with_library(body: &str) -> Script {
    Script::new(&format!("{LIBRARY}\n{body}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The key guard only sees what goes through `call`: a script calling Redis directly
    /// would bypass it.
    #[test]
    fn only_the_key_guard_calls_redis_directly() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lua");
        let mut direct = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("the scripts' directory") {
            let path = entry.expect("a directory entry").path();
            let text = std::fs::read_to_string(&path).expect("a script");
            let calls = text.matches("redis.call").count() + text.matches("redis.pcall").count();
            let allowed = usize::from(path.ends_with("lib.lua"));
            if calls != allowed {
                direct.push(format!("{}: {calls}", path.display()));
            }
        }
        assert!(direct.is_empty(), "direct Redis calls: {direct:?}");
    }

    /// The event types `xadd_event` copies to the hooks stream are the ones the webhook
    /// deliverer reports.
    #[test]
    fn the_hooks_stream_gets_the_lifecycle_events_webhooks_report() {
        let library = super::LIBRARY;
        let start = library
            .find("local HOOK_TYPES = {")
            .expect("HOOK_TYPES in lib.lua");
        let table = &library[start..];
        let table = &table[..table.find('}').expect("the end of HOOK_TYPES")];
        let mut named: Vec<&str> = table
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .filter(|word| word.chars().next().is_some_and(char::is_uppercase))
            .filter(|word| *word != "HOOK_TYPES")
            .collect();
        named.sort_unstable();
        let mut expected = domain::webhook::LIFECYCLE_EVENT_TYPES.to_vec();
        expected.sort_unstable();
        assert_eq!(named, expected);
    }
}
