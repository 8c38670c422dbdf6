use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json, render};
use crate::grant::{GrantId, RevokeResult, RevokeTrigger};
use crate::ops::revoke::{self, RevokeSelector, RevokeSpec};

/// End access now: deny the grant's AWS session through the role's revocation policy (read back to
/// be sure), record a signed revoke record, and remove its credentials from the keyring.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["grant", "branch", "mine"])))]
pub struct RevokeArgs {
    /// The grant to revoke.
    grant: Option<GrantId>,
    /// Every open grant taken on this branch.
    #[arg(long)]
    branch: Option<String>,
    /// Every open grant of yours in this repository.
    #[arg(long)]
    mine: bool,
    /// Why (recorded in the revoke record).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    iam: super::IamArgs,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: RevokeArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let selector = match (args.grant, args.branch, args.mine) {
        (Some(id), _, _) => RevokeSelector::Grant(id),
        (None, Some(branch), _) => RevokeSelector::Branch(branch),
        _ => RevokeSelector::Mine,
    };
    let spec = RevokeSpec {
        selector,
        reason: args.reason,
        trigger: RevokeTrigger::Manual,
        timeout: args.iam.timeout(),
        profile: args.iam.profile,
    };
    let signer = ctx.signer(&repo)?;
    let spinner = render::Spinner::start("revoking");
    let outcomes = revoke::revoke(&repo, &spec, &signer, super::now());
    drop(spinner);
    let outcomes = outcomes?;
    let finished = crate::ops::finish::after_write(
        &repo,
        &[crate::ops::finish::Written::Revoked(&outcomes)],
        super::now(),
    );
    super::report_finished(&finished);
    let complete = outcomes.iter().all(|o| {
        matches!(o.result, None | Some(RevokeResult::Done | RevokeResult::Requested))
            && o.record_error.is_none()
    });
    if args.json {
        print_json(&outcomes)?;
    } else {
        let mut out = std::io::stdout().lock();
        for o in &outcomes {
            let what = o.role.clone().unwrap_or_default();
            match (o.result, &o.note) {
                (Some(RevokeResult::Done), note) => {
                    writeln!(out, "revoked {} ({what}, {})", o.grant_id, render::branch(&o.branch))?;
                    if let Some(note) = note {
                        eprintln!("WARNING: {}", crate::escape::controls(note));
                    }
                }
                (Some(RevokeResult::Requested), _) => writeln!(
                    out,
                    "revocation requested: {} ({what}, {}) was minted by the broker, which ends it on its next pass; \
                     its credentials are no longer handed out here",
                    o.grant_id,
                    render::branch(&o.branch)
                )?,
                (Some(result), Some(note)) => writeln!(
                    out,
                    "NOT revoked yet: {} ({what}) is {}: {}\n  its credentials are no longer handed out here, but the AWS session stays valid until denied: run `tpa revoke {}` again",
                    o.grant_id,
                    result.as_str(),
                    crate::escape::controls(note),
                    o.grant_id
                )?,
                (_, note) => writeln!(out, "{}: {}", o.grant_id, note.as_deref().unwrap_or("nothing to do"))?,
            }
            if let Some(e) = &o.record_error {
                writeln!(
                    out,
                    "  warning: the revoke record could not be written: {}",
                    crate::escape::controls(e)
                )?;
            }
        }
    }
    Ok(if complete { exit::OK } else { exit::ERROR })
}
