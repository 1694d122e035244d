//! `bulk list`: the account's actions, newest first.

use super::{Context, Outcome};
use crate::error::CliError;
use crate::model::View;
use crate::output::view_line;

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only actions with this status (scheduled, queued, running, paused, cancelling,
    /// completed, failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only actions on this entity type.
    #[arg(long)]
    pub entity: Option<String>,
    /// How many (1–100).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// How many of the newest to pass over, for paging.
    #[arg(long, default_value_t = 0)]
    pub skip: u32,
}

pub async fn run(context: &Context, args: &ListArgs) -> Result<Outcome, CliError> {
    let mut query = vec![
        ("limit", args.limit.to_string()),
        ("skip", args.skip.to_string()),
    ];
    if let Some(status) = &args.status {
        query.push(("status", status.clone()));
    }
    if let Some(entity) = &args.entity {
        query.push(("entityType", entity.clone()));
    }
    let page = context.client.get_json("/bulk-actions", &query).await?;
    context.output.show(&page, || {
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let mut lines: Vec<String> = items
            .into_iter()
            .filter_map(|item| serde_json::from_value::<View>(item).ok())
            .map(|view| view_line(&view))
            .collect();
        lines.push(format!(
            "{} of {} shown",
            lines.len(),
            page["total"].as_u64().unwrap_or_default()
        ));
        lines.join("\n")
    });
    Ok(Outcome::Done)
}
