//! `bulk watch ID`: follows an action to its end, as `submit --wait` does.

use super::{wait_for, Context, Outcome, WaitArgs};
use crate::error::CliError;
use crate::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    pub id: String,
    #[command(flatten)]
    pub limits: WaitArgs,
}

pub async fn run(context: &Context, args: &WatchArgs) -> Result<Outcome, CliError> {
    let id = super::action_id(&args.id)?;
    let mut progress = Progress::new(context.style);
    wait_for(context, id, &args.limits, &mut progress).await
}
