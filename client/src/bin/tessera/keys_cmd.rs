//! `tessera keys ...`: create, list and revoke API keys, and set a tenant's
//! user-token policy.

use crate::cli::KeysCommand;
use crate::run::{bad_input, print_json, Failure};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use tessera_client::TesseraClient;

/// Runs one `keys` subcommand.
pub async fn keys(client: &TesseraClient, command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Create {
            tenant,
            scopes,
            name,
            out,
            json,
        } => {
            let tenant = tenant.unwrap_or_default();
            let created = client.create_key(&tenant, &scopes, &name).await?;
            if let Some(path) = &out {
                write_private(path, &created.key)?;
            }
            if json {
                return print_json(&created);
            }
            let owner = if tenant.is_empty() {
                "the cluster".to_string()
            } else {
                format!("tenant {tenant}")
            };
            match &out {
                Some(path) => println!(
                    "created key {} for {owner} ({}); its text is in {}",
                    created.info.id,
                    created.info.scopes.join(","),
                    path.display()
                ),
                None => {
                    println!("{}", created.key);
                    eprintln!(
                        "created key {} for {owner} ({}); store it now, it is not shown again",
                        created.info.id,
                        created.info.scopes.join(",")
                    );
                }
            }
            Ok(())
        }
        KeysCommand::List { tenant, json } => {
            let keys = client.list_keys(tenant.as_deref().unwrap_or("")).await?;
            if json {
                return print_json(&keys);
            }
            println!(
                "{:<16}  {:<16}  {:<26}  {:<8}  name",
                "id", "tenant", "scopes", "state"
            );
            for k in keys {
                let tenant = if k.tenant.is_empty() {
                    "(cluster)"
                } else {
                    &k.tenant
                };
                let state = if k.revoked_ms == 0 { "live" } else { "revoked" };
                println!(
                    "{:<16}  {:<16}  {:<26}  {:<8}  {}",
                    k.id,
                    tenant,
                    k.scopes.join(","),
                    state,
                    k.name
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => {
            let epoch = client.revoke_key(&id).await?;
            println!("revoked key {id} (map epoch {epoch}); routers refuse it from that epoch on");
            Ok(())
        }
        KeysCommand::UserTokens {
            tenant,
            public_key,
            required,
        } => {
            let pem = match &public_key {
                Some(p) => std::fs::read_to_string(p).map_err(|e| {
                    bad_input(format!("cannot read the public key {}: {e}", p.display()))
                })?,
                None => String::new(),
            };
            client.set_user_tokens(&tenant, &pem, required).await?;
            match (pem.is_empty(), required) {
                (_, true) => println!(
                    "tenant {tenant} now requires a signed user token on every search and get"
                ),
                (false, false) => println!(
                    "tenant {tenant} verifies user tokens when sent, and does not require them"
                ),
                (true, false) => println!("tenant {tenant} no longer uses user tokens"),
            }
            Ok(())
        }
    }
}

/// Writes a key's text to `path`, readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> Result<(), Failure> {
    let fail = |e: std::io::Error| bad_input(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    writeln!(f, "{text}").map_err(fail)
}
