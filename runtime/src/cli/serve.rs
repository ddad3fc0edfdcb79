//! `airlock serve` and `airlock api-key`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::identity::need_data_dir;
use super::{Failure, exit};
use crate::Config;
use crate::api::{Api, Role};
use crate::engine::EngineConfig;
use crate::node::{Node, NodeOptions};

/// `airlock serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8480", value_name = "ADDR")]
    listen: SocketAddr,
    /// Policy directory (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    policy: Option<PathBuf>,
    /// How long in-flight requests may take to finish once shutdown begins;
    /// runs still going after that are cancelled.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Share admitted skills with other nodes through this NATS server
    /// (JetStream), for example `nats://10.0.0.5:4222`; overrides
    /// `[cluster] url`.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
}

/// Serve the API, health and the identity endpoints until Ctrl-C or
/// SIGTERM; then stop accepting, let in-flight requests finish within the
/// grace period, cancel the rest and flush the audit log.
pub async fn serve(
    args: ServeArgs,
    mut config: Config,
    data_dir: Option<PathBuf>,
) -> Result<u8, Failure> {
    if let Some(url) = args.cluster.clone() {
        config.cluster = Some(crate::cluster::ClusterConfig {
            url,
            ..config.cluster.take().unwrap_or_default()
        });
    }
    let data_dir = need_data_dir(data_dir)?;
    let api_config = config.api.clone();
    if api_config.keys.is_empty() {
        eprintln!(
            "airlock: no API keys are configured ([[api.keys]]): every /v1 request will be refused; make one with `airlock api-key --principal NAME --role ROLE`"
        );
    }
    let serves_queue = config.cluster.as_ref().is_some_and(|c| c.queue_runs);
    let max_instances = api_config.instance_slots(serves_queue);
    let (node, api) = node_and_api(config, data_dir, args.policy, max_instances).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener.local_addr().unwrap_or(args.listen);
    eprintln!("airlock: serving the API on http://{local} (health at /healthz)");
    let router = crate::api::router(api.clone());
    let header_timeout = api.config().header_timeout;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors and the like: wait, don't spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    api.shutdown();
    eprintln!(
        "airlock: shutting down; waiting up to {} for requests in flight",
        humantime::format_duration(args.grace)
    );
    if tokio::time::timeout(args.grace, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("airlock: requests still in flight after the grace period were cancelled");
    }
    // The last handle on the node: its audit writer drains what is queued.
    drop(router);
    drop(api);
    drop(node);
    Ok(exit::OK)
}

/// The node and the API over it, as `serve` and `mcp` both run them.
pub(super) async fn node_and_api(
    config: Config,
    data_dir: PathBuf,
    policy_dir: Option<PathBuf>,
    max_instances: u32,
) -> Result<(std::sync::Arc<Node>, std::sync::Arc<Api>), Failure> {
    let api_config = config.api.clone();
    let defaults = EngineConfig::default();
    let settings = config.cluster.clone();
    let cluster = match &settings {
        Some(settings) => Some(crate::cluster::Cluster::connect(settings).await?),
        None => None,
    };
    let registry = cluster.clone().map(|c| {
        std::sync::Arc::new(c) as std::sync::Arc<dyn crate::admission::registry::Registry>
    });
    let home = data_dir.clone();
    let node = Node::new(
        config,
        NodeOptions {
            engine: EngineConfig {
                cache_dir: Some(data_dir.join("cache")),
                max_instances,
                ..defaults
            },
            data_dir: Some(data_dir),
            policy_dir,
            registry,
            ..NodeOptions::default()
        },
    )?;
    if let (Some(cluster), Some(settings)) = (&cluster, &settings) {
        // Others verify this node's checkpoints with the keys it publishes.
        let name = crate::cluster::node_name(settings, &home)?;
        let jwks = node.issuer().jwks();
        let keys = jwks
            .get("keys")
            .and_then(|k| k.as_array())
            .cloned()
            .unwrap_or_default();
        cluster.publish_keys(&name, &keys).await?;
        // Introspection here answers for tokens minted on any node.
        node.issuer().share(std::sync::Arc::new(cluster.clone()));
        if let Some(audit) = &node.services().audit {
            // Runs for the life of the process.
            drop(cluster.ship_audit(name.clone(), audit.path().to_path_buf()));
        }
        eprintln!("airlock: node {name} in the cluster at {}", settings.url);
    }
    let max_runs = api_config.max_runs;
    let api = Api::new(node.clone(), api_config)?;
    if let (Some(cluster), Some(settings)) = (&cluster, &settings)
        && settings.queue_runs
    {
        let name = crate::cluster::node_name(settings, &home)?;
        // Runs for the life of the process.
        drop(cluster.serve_runs(
            node.clone(),
            name,
            usize::try_from(max_runs).unwrap_or(usize::MAX),
            settings.run_ack_wait,
        ));
        api.queue_runs(cluster.clone());
    }
    Ok((node, api))
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// `airlock api-key`.
#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    /// Who will hold the key.
    #[arg(long)]
    principal: String,
    /// A role to grant (repeat for several): submitter, reviewer, runner,
    /// auditor or admin.
    #[arg(long = "role", required = true, value_parser = parse_role)]
    roles: Vec<Role>,
    /// The tenant whose skills the key works with.
    #[arg(long, default_value = crate::admission::DEFAULT_TENANT)]
    tenant: String,
}

fn parse_role(text: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
        format!("unknown role `{text}` (expected submitter, reviewer, runner, auditor or admin)")
    })
}

/// Make an API key: the key goes to its holder (shown once), the stanza
/// with its hash into `airlock.toml`.
pub fn api_key(args: &ApiKeyArgs) -> Result<u8, Failure> {
    let (key, hash) = crate::api::new_key();
    let roles: Vec<String> = args
        .roles
        .iter()
        .map(|r| format!("\"{}\"", r.as_str()))
        .collect();
    println!("{key}");
    eprintln!(
        "airlock: give the key above to `{}`; it is not stored anywhere. Add this to airlock.toml:\n",
        args.principal
    );
    eprintln!(
        "[[api.keys]]\nprincipal = {}\nroles = [{}]\ntenant = {}\nhash = \"{hash}\"",
        toml_string(&args.principal),
        roles.join(", "),
        toml_string(&args.tenant)
    );
    Ok(exit::OK)
}

fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}
