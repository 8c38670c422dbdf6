use std::io::Write;

use clap::Args;

use super::{Ctx, exit};
use crate::grant::GrantId;
use crate::ops::context;
use crate::ops::deliver::{self, Selector};
use crate::provider::Credentials;

/// Print `export` lines with an active grant's AWS credentials, for `eval "$(tpa env)"`.
#[derive(Args)]
pub struct EnvArgs {
    /// The grant (default: your newest active grant in this repository).
    grant: Option<GrantId>,
    /// Your newest active grant for this role.
    #[arg(long, conflicts_with = "grant")]
    role: Option<String>,
}

pub fn run(ctx: &Ctx, args: EnvArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let me = context::principal(&repo)?.email;
    let selector = match (args.grant, args.role) {
        (Some(id), _) => Selector::Grant(id),
        (None, Some(role)) => Selector::Role(role),
        (None, None) => Selector::Newest,
    };
    let (grant, credentials) = deliver::credentials_for(&repo, &selector, &me, super::now())?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", export_lines(&credentials))?;
    writeln!(out, "export TPA_GRANT={}", grant.grant_id)?;
    Ok(exit::OK)
}

pub fn export_lines(credentials: &Credentials) -> String {
    format!(
        "export AWS_ACCESS_KEY_ID={}\nexport AWS_SECRET_ACCESS_KEY={}\nexport AWS_SESSION_TOKEN={}\nexport AWS_CREDENTIAL_EXPIRATION={}\n",
        shell_quote(&credentials.access_key_id),
        shell_quote(&credentials.secret_access_key),
        shell_quote(&credentials.session_token),
        shell_quote(&super::render::time(credentials.expiration)),
    )
}

/// Single-quotes for POSIX shells.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}
