//! The feature store side of the client: definitions, events, online and
//! historical values (DESIGN.md "features.toml").

use crate::client::TesseraClient;
use crate::error::ClientError;
use serde::Serialize;
use tessera_proto::pb;

/// One registered feature as the registry describes it.
pub type FeatureInfo = pb::FeatureDef;

/// The entity a feature value is read for; empty parts are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EntityKey {
    /// `u:<user>`, for user, user+space and user+doc features.
    pub user: String,
    /// Space key, for space and user+space features.
    pub space: String,
    /// Document id, for doc and user+doc features.
    pub doc: String,
}

impl EntityKey {
    /// Parses `user=u:a,space=ENG,doc=p-1` (any subset, any order).
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let mut e = EntityKey::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                ClientError::InvalidInput(format!(
                    "entity part {part:?} is not key=value (e.g. user=u:a,space=ENG)"
                ))
            })?;
            match k.trim() {
                "user" => e.user = v.trim().to_string(),
                "space" => e.space = v.trim().to_string(),
                "doc" => e.doc = v.trim().to_string(),
                other => {
                    return Err(ClientError::InvalidInput(format!(
                        "unknown entity key {other:?}: use user, space or doc"
                    )))
                }
            }
        }
        Ok(e)
    }

    fn to_pb(&self) -> pb::EntityKey {
        pb::EntityKey {
            user: self.user.clone(),
            space: self.space.clone(),
            doc: self.doc.clone(),
        }
    }
}

/// Online values, in the order the features were asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnlineValues {
    /// One per requested feature; `None` is null.
    pub values: Vec<Option<f64>>,
    /// The serving replica's clock: the `t` the values hold at.
    pub as_of_ms: i64,
    /// The registry version the values were computed under.
    pub registry_version: u64,
}

/// One input row of `historical_features`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoricalRow {
    /// Whose values.
    pub entity: EntityKey,
    /// The point in time `t` (epoch ms).
    pub ts_ms: i64,
}

impl TesseraClient {
    /// Validates and registers a new version of a tenant's `features.toml`
    /// on every shard. Returns `(version, changed, session token)`.
    pub async fn apply_features(
        &self,
        tenant: &str,
        toml: &str,
    ) -> Result<(u64, bool, String), ClientError> {
        let req = self.request(pb::ApplyFeaturesRequest {
            tenant: tenant.to_string(),
            shard: 0,
            toml: toml.to_string(),
            timeout_ms: self.timeout_ms(),
        });
        let r = self
            .features
            .clone()
            .apply_features(req)
            .await?
            .into_inner();
        Ok((r.version, r.changed, r.token_str))
    }

    /// The tenant's registry: its version and definitions.
    pub async fn list_features(
        &self,
        tenant: &str,
    ) -> Result<(u64, Vec<FeatureInfo>), ClientError> {
        let req = self.request(pb::ListFeaturesRequest {
            tenant: tenant.to_string(),
            shard: 0,
            timeout_ms: self.timeout_ms(),
        });
        let r = self.features.clone().list_features(req).await?.into_inner();
        Ok((r.version, r.features))
    }

    /// Writes events (JSON lines of the DESIGN.md schema). One invalid line
    /// rejects the batch and nothing is written. Returns `(acked, token)`.
    pub async fn put_events(
        &self,
        tenant: &str,
        events_json: Vec<Vec<u8>>,
        session: &str,
    ) -> Result<(u32, String), ClientError> {
        for (i, line) in events_json.iter().enumerate() {
            tessera_proto::Event::from_json_bytes(line).map_err(|e| {
                ClientError::InvalidInput(format!("event {i}: {e}; nothing written"))
            })?;
        }
        let req = self.request(pb::PutEventsRequest {
            tenant: tenant.to_string(),
            shard: 0,
            events_json,
            timeout_ms: self.timeout_ms(),
            session: session.to_string(),
            ..Default::default()
        });
        let r = self.features.clone().put_events(req).await?.into_inner();
        Ok((r.acked, r.token_str))
    }

    /// Current values of `features` for one entity.
    pub async fn online_features(
        &self,
        tenant: &str,
        entity: &EntityKey,
        features: &[String],
        token: &str,
    ) -> Result<OnlineValues, ClientError> {
        let req = self.request(pb::OnlineFeaturesRequest {
            tenant: tenant.to_string(),
            shard: 0,
            entity: Some(entity.to_pb()),
            features: features.to_vec(),
            timeout_ms: self.timeout_ms(),
            min_applied: 0,
            token: token.to_string(),
        });
        let r = self
            .features
            .clone()
            .online_features(req)
            .await?
            .into_inner();
        Ok(OnlineValues {
            values: r.values.into_iter().map(|v| v.value).collect(),
            as_of_ms: r.as_of_ms,
            registry_version: r.registry_version,
        })
    }

    /// Point-in-time values of `features` for every row, in row order; a
    /// row never disappears (its values are null instead).
    pub async fn historical_features(
        &self,
        tenant: &str,
        rows: &[HistoricalRow],
        features: &[String],
        as_of_known: bool,
        token: &str,
    ) -> Result<Vec<Vec<Option<f64>>>, ClientError> {
        let req = self.request(pb::HistoricalFeaturesRequest {
            tenant: tenant.to_string(),
            shard: 0,
            rows: rows
                .iter()
                .map(|r| pb::HistoricalRow {
                    entity: Some(r.entity.to_pb()),
                    ts_ms: r.ts_ms,
                })
                .collect(),
            features: features.to_vec(),
            as_of_known,
            timeout_ms: self.timeout_ms(),
            min_applied: 0,
            token: token.to_string(),
        });
        let r = self
            .features
            .clone()
            .historical_features(req)
            .await?
            .into_inner();
        if r.rows.len() != rows.len() {
            return Err(ClientError::Internal(format!(
                "router returned {} rows for {} inputs",
                r.rows.len(),
                rows.len()
            )));
        }
        Ok(r.rows
            .into_iter()
            .map(|row| row.values.into_iter().map(|v| v.value).collect())
            .collect())
    }
}

/// Reads a rows CSV with a header naming `ts` (RFC 3339 or epoch ms) and
/// any of `user`, `space`, `doc`. Returns the header, the raw lines and the rows.
pub fn parse_rows_csv(
    text: &str,
) -> Result<(String, Vec<String>, Vec<HistoricalRow>), ClientError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .ok_or_else(|| ClientError::InvalidInput("rows file is empty: it needs a header".into()))?
        .trim_end_matches('\r')
        .to_string();
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let ts = col("ts").ok_or_else(|| {
        ClientError::InvalidInput(format!("rows header {header:?} has no `ts` column"))
    })?;
    let (u, s, d) = (col("user"), col("space"), col("doc"));
    let mut raw = Vec::new();
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.trim_end_matches('\r');
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != cols.len() {
            return Err(ClientError::InvalidInput(format!(
                "rows line {}: {} cells, the header has {}",
                n + 2,
                cells.len(),
                cols.len()
            )));
        }
        let cell = |i: Option<usize>| i.map(|i| cells[i].to_string()).unwrap_or_default();
        let ts_text = cells[ts];
        let ts_ms = ts_text
            .parse::<i64>()
            .ok()
            .or_else(|| tessera_proto::event::parse_ts_millis(ts_text))
            .ok_or_else(|| {
                ClientError::InvalidInput(format!(
                    "rows line {}: ts {ts_text:?} is neither RFC 3339 nor epoch milliseconds",
                    n + 2
                ))
            })?;
        rows.push(HistoricalRow {
            entity: EntityKey {
                user: cell(u),
                space: cell(s),
                doc: cell(d),
            },
            ts_ms,
        });
        raw.push(line.to_string());
    }
    Ok((header, raw, rows))
}

/// Writes the input rows plus one column per feature; null is an empty cell.
pub fn format_rows_csv(
    header: &str,
    raw: &[String],
    features: &[String],
    values: &[Vec<Option<f64>>],
) -> String {
    let mut out = String::new();
    out.push_str(header);
    for f in features {
        out.push(',');
        out.push_str(f);
    }
    out.push('\n');
    for (line, vals) in raw.iter().zip(values) {
        out.push_str(line);
        for v in vals {
            out.push(',');
            if let Some(v) = v {
                out.push_str(&v.to_string());
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_keeps_rows_and_order() {
        let text = "user,space,ts\nu:a,ENG,2026-01-01T00:00:00Z\nu:b,OPS,5\n";
        let (h, raw, rows) = parse_rows_csv(text).expect("valid");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ts_ms, 1_767_225_600_000);
        assert_eq!(rows[1].entity.user, "u:b");
        let out = format_rows_csv(&h, &raw, &["f".into()], &[vec![Some(2.5)], vec![None]]);
        assert_eq!(
            out,
            "user,space,ts,f\nu:a,ENG,2026-01-01T00:00:00Z,2.5\nu:b,OPS,5,\n"
        );
        assert!(parse_rows_csv("user\nu:a\n").is_err());
        assert!(parse_rows_csv("user,ts\nu:a,soon\n").is_err());
    }

    #[test]
    fn entity_keys_parse() {
        let e = EntityKey::parse("user=u:a,space=ENG").expect("valid");
        assert_eq!(e.user, "u:a");
        assert_eq!(e.space, "ENG");
        assert!(EntityKey::parse("team=x").is_err());
    }
}
