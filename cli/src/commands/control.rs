//! `bulk cancel|pause|resume ID`.

use super::{Context, Outcome};
use crate::error::CliError;
use crate::model::View;

#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    pub id: String,
}

#[derive(Debug, Clone, Copy)]
pub enum Control {
    Cancel,
    Pause,
    Resume,
}

pub async fn run(
    context: &Context,
    control: Control,
    args: &ControlArgs,
) -> Result<Outcome, CliError> {
    let id = super::action_id(&args.id)?;
    let verb = match control {
        Control::Cancel => "cancel",
        Control::Pause => "pause",
        Control::Resume => "resume",
    };
    let view = context
        .client
        .post_json(&format!("/bulk-actions/{id}/{verb}"), None, None)
        .await?;
    context.output.show(&view, || {
        let parsed: View = serde_json::from_value(view.clone()).unwrap_or_default();
        format!("{id} {}", parsed.counts.status)
    });
    Ok(Outcome::Done)
}
