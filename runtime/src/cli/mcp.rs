//! `airlock mcp`: approved skills as MCP tools on stdio.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;
use rmcp::ServiceExt as _;

use super::identity::need_data_dir;
use super::{Failure, exit};
use crate::Config;
use crate::api::mcp::Tools;
use crate::api::{Principal, Role};

/// `airlock mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Who the MCP client is: recorded as each run's requester. Defaults to
    /// $AIRLOCK_USER, then $USER.
    #[arg(long = "as", value_name = "NAME")]
    principal: Option<String>,
    /// The tenant whose approved skills are offered.
    #[arg(long, default_value = crate::admission::DEFAULT_TENANT)]
    tenant: String,
    /// Policy directory (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    policy: Option<PathBuf>,
}

/// Serve until the client closes stdin. Nothing but MCP goes to stdout.
pub async fn serve(
    args: McpArgs,
    config: Config,
    data_dir: Option<PathBuf>,
) -> Result<u8, Failure> {
    let data_dir = need_data_dir(data_dir)?;
    let name = args
        .principal
        .filter(|n| !n.trim().is_empty())
        .or_else(super::admit::local_user)
        .ok_or_else(|| {
            Failure::usage("who is the MCP client? pass --as NAME or set AIRLOCK_USER")
        })?;
    // Sized as `serve` sizes its pool: MCP runs take the API's run slots.
    let max_instances = config.api.instance_slots(false);
    let (node, api) =
        super::serve::node_and_api(config, data_dir, args.policy, max_instances).await?;
    // A local client runs skills; the control-plane policies still decide.
    let caller = Principal {
        name,
        roles: BTreeSet::from([Role::Runner]),
        tenant: args.tenant,
    };
    let running = Tools::for_caller(api.clone(), caller)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Failure::usage(format!("the MCP client did not initialize: {e}")))?;
    let _ = running.waiting().await;
    drop(api);
    drop(node);
    Ok(exit::OK)
}
