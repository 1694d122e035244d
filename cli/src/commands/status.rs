//! `bulk status ID`: the action view, once.

use super::{Context, Outcome};
use crate::error::CliError;
use crate::model::View;
use crate::output::view_details;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    pub id: String,
}

pub async fn run(context: &Context, args: &StatusArgs) -> Result<Outcome, CliError> {
    let id = super::action_id(&args.id)?;
    let view = context
        .client
        .get_json(&format!("/bulk-actions/{id}"), &[])
        .await?;
    context.output.show(&view, || {
        serde_json::from_value::<View>(view.clone())
            .map(|parsed| view_details(&parsed))
            .unwrap_or_else(|_| view.to_string())
    });
    Ok(Outcome::Done)
}
