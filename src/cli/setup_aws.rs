use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{Ctx, exit, print_json};
use crate::provider::aws_iam::{AwsIam, RevocationTarget};
use crate::trust::TrustRef;

/// One-time AWS setup for a role of the policy: create its revocation policy
/// (`tpa-revocations-<role>`, a customer-managed policy that denies revoked tpa sessions) and attach
/// it to the role. Needs IAM rights; revokers then only need to write versions of that one policy.
#[derive(Args)]
pub struct SetupAwsArgs {
    /// The role, as named in .tpa/policy.toml.
    #[arg(long)]
    role: String,
    #[command(flatten)]
    iam: super::IamArgs,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: SetupAwsArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let trust = TrustRef::resolve(&repo)?;
    let (policy, _) = crate::policy::load(&repo, &trust)?;
    let role = policy.role(&args.role)?;
    let target = RevocationTarget::for_role(&role.arn)?;
    let iam = AwsIam::new(args.iam.profile.as_deref(), args.iam.timeout());
    let changed = iam.set_up(&target)?;
    if args.json {
        print_json(&json!({ "role": args.role, "policy_arn": target.policy_arn, "changed": changed }))?;
    } else {
        let mut out = std::io::stdout().lock();
        let verb = if changed { "set up" } else { "already set up" };
        writeln!(
            out,
            "revocation policy {} {verb} and attached to role {}",
            target.policy_arn, target.role_name
        )?;
    }
    Ok(exit::OK)
}
