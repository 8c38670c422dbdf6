use clap::Args;
use serde_json::json;

use super::{Ctx, exit, print_json, render};
use crate::ops::context;
use crate::ops::deliver::{self, Selector};
use crate::provider::Credentials;

/// Print an active grant's credentials in the AWS `credential_process` format, so an AWS profile can
/// use tpa directly: `credential_process = tpa -C /path/to/repo credential-process --role NAME`.
/// Never mints: with no active grant it fails, and the AWS tool says so.
#[derive(Args)]
pub struct CredentialProcessArgs {
    /// Your newest active grant for this role.
    #[arg(long)]
    role: String,
}

pub fn run(ctx: &Ctx, args: CredentialProcessArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let me = context::principal(&repo)?.email;
    let (_, credentials) = deliver::credentials_for(&repo, &Selector::Role(args.role), &me, super::now())?;
    print(&credentials)?;
    Ok(exit::OK)
}

pub fn print(credentials: &Credentials) -> anyhow::Result<()> {
    print_json(&json!({
        "Version": 1,
        "AccessKeyId": credentials.access_key_id,
        "SecretAccessKey": credentials.secret_access_key.as_str(),
        "SessionToken": credentials.session_token.as_str(),
        "Expiration": render::time(credentials.expiration),
    }))
}
