//! `causeway events`: reads a stopped node's events (a stream, a category, or the global log from
//! a position or a time) as text or JSON lines.

use std::process::ExitCode;

use anyhow::Result;

use crate::args::{parse_time, write_line, StoreArgs};

/// The flags of `causeway events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this stream (e.g. order-<id>).
    #[arg(long, conflicts_with_all = ["category"])]
    pub stream: Option<String>,
    /// Only this category (e.g. saga).
    #[arg(long)]
    pub category: Option<String>,
    /// From this global position (inclusive).
    #[arg(long, default_value_t = 1, conflicts_with = "from_time")]
    pub from_position: u64,
    /// From this time (RFC 3339).
    #[arg(long)]
    pub from_time: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints the events.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args { store, stream, category, from_position, from_time, limit, json } = args;
    let from_time = from_time.as_deref().map(parse_time).transpose()?;
    let stream = stream.map(event_store::StreamId::new).transpose()?;
    let store = store.open_existing()?;
    let start = match from_time {
        Some(t) => store.seek_time(t)?,
        None => from_position.max(1),
    };
    let iter: Box<dyn Iterator<Item = event_store::Result<event_store::RecordedEvent>>> =
        match (&stream, &category) {
            (Some(s), _) => Box::new(
                store
                    .read_stream(s, 1, event_store::Direction::Forward)
                    .filter(move |e| e.as_ref().map_or(true, |e| e.position >= start)),
            ),
            (None, Some(c)) => Box::new(store.read_category(c, start)),
            (None, None) => Box::new(store.read_all(start)),
        };
    let mut out = std::io::stdout().lock();
    for e in iter.take(limit) {
        let e = e?;
        let line = if json { json_line(e)? } else { text_line(&e)? };
        if !write_line(&mut out, &line)? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An event as the API shows it (`services::http::view`), with its metadata and content type.
fn json_line(e: event_store::RecordedEvent) -> Result<String> {
    let (metadata, content_type) = (e.metadata.clone(), e.content_type.clone());
    let mut v = serde_json::to_value(services::http::view(e))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("metadata".into(), serde_json::to_value(metadata)?);
        o.insert("content_type".into(), serde_json::to_value(content_type)?);
    }
    Ok(v.to_string())
}

fn text_line(e: &event_store::RecordedEvent) -> Result<String> {
    let payload = String::from_utf8_lossy(&e.payload);
    let short: String = payload.chars().take(120).collect();
    Ok(format!(
        "{:>8}  {}  {}@{}  {}  {}",
        e.position,
        e.recorded_at().format(&time::format_description::well_known::Rfc3339)?,
        e.stream_id,
        e.version,
        e.event_type,
        short
    ))
}
