//! `tpa db-token`: print a fresh IAM auth token for an rds-iam grant. The one command that prints
//! a database secret; `tpa exec --db` hands it to a client without printing it.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{Ctx, exit, print_json, render};
use crate::grant::GrantId;
use crate::ops::context;
use crate::ops::database::{self, DbSelector};

/// Print a fresh IAM auth token (valid 15 minutes) for your active grant on an rds-iam database.
#[derive(Args)]
pub struct DbTokenArgs {
    /// The grant (default: your newest active grant for --db).
    #[arg(required_unless_present = "db", conflicts_with = "db")]
    grant: Option<GrantId>,
    /// The database, as named in .tpa/policy.toml ([databases.NAME]).
    #[arg(long, value_name = "NAME")]
    db: Option<String>,
    /// Print the token with host, port, user and expiry as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: DbTokenArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let me = context::principal(&repo)?.email;
    let selector = match (args.grant, args.db) {
        (Some(id), _) => DbSelector::Grant(id),
        (None, Some(db)) => DbSelector::Database(db),
        (None, None) => unreachable!("clap requires one"),
    };
    let login = database::login(&repo, &selector, &me, super::now(), false)?;
    if args.json {
        print_json(&json!({
            "grant_id": login.grant_id,
            "database": login.database.name,
            "host": login.database.host,
            "port": login.database.port,
            "user": login.user,
            "token": login.password.as_str(),
            "expires_at": render::time(login.valid_until),
        }))?;
    } else {
        writeln!(std::io::stdout().lock(), "{}", login.password.as_str())?;
    }
    Ok(exit::OK)
}
