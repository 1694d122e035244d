//! A `text/event-stream` parser: bytes in as the network hands them, whole messages out.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

#[derive(Default)]
pub struct Parser {
    buffer: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, chunk: &[u8]) {
        // A CR LF may be split across chunks; dropping every CR (JSON data escapes its
        // own) makes either line ending one `\n`.
        self.buffer
            .extend(chunk.iter().copied().filter(|b| *b != b'\r'));
    }

    /// The next complete message, if the buffer holds one. Comments (keep-alives) and
    /// blocks without data are consumed silently.
    pub fn next_message(&mut self) -> Option<Message> {
        loop {
            let end = self.buffer.windows(2).position(|pair| pair == b"\n\n")?;
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut message = Message {
                id: None,
                event: "message".into(),
                data: String::new(),
            };
            let mut has_data = false;
            for line in text.lines() {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => message.id = Some(value.to_owned()),
                    "event" => message.event = value.to_owned(),
                    "data" => {
                        if has_data {
                            message.data.push('\n');
                        }
                        message.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                return Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_anywhere_come_out_whole() {
        let stream = b": keep-alive\n\nid: 3\r\nevent: snapshot\r\ndata: {\"a\":1}\r\n\r\nid: 4\nevent: progress\ndata: {}\n\n";
        for cut in 0..stream.len() {
            let mut parser = Parser::default();
            parser.push(&stream[..cut]);
            let mut seen = Vec::new();
            while let Some(message) = parser.next_message() {
                seen.push(message);
            }
            parser.push(&stream[cut..]);
            while let Some(message) = parser.next_message() {
                seen.push(message);
            }
            assert_eq!(seen.len(), 2, "cut at {cut}");
            assert_eq!(seen[0].id.as_deref(), Some("3"));
            assert_eq!(seen[0].event, "snapshot");
            assert_eq!(seen[0].data, "{\"a\":1}");
            assert_eq!(seen[1].event, "progress");
        }
    }

    #[test]
    fn several_data_lines_join_with_newlines() {
        let mut parser = Parser::default();
        parser.push(b"data: a\ndata: b\n\n");
        assert_eq!(
            parser.next_message().map(|m| (m.event, m.data)),
            Some(("message".into(), "a\nb".into()))
        );
        assert_eq!(parser.next_message(), None);
    }
}
