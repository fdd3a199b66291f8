//! `tessera features historical` with Parquet rows and output (DESIGN.md
//! "features.toml": "`.parquet` works as well as `.csv`"), through the real
//! CLI binary, a real in-process cluster and router: Parquet in and out
//! gives bit for bit the values of the CSV path for the same rows, nulls
//! included; input columns leave with their types; the formats cross
//! (CSV in, Parquet out and back); unknown extensions and bad timestamps
//! exit 2 with nothing written.

use std::sync::Arc;
use tessera_client::parquet_rows::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use tessera_client::parquet_rows::arrow::datatypes::{
    DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit,
};
use tessera_client::parquet_rows::parquet::arrow::ArrowWriter;
use tessera_client::parquet_rows::parquet::file::properties::WriterProperties;
use tessera_client::parquet_rows::read_parquet;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::routers::cli;
use tessera_tests::{eventually, Layout, TestCluster};

const TOML: &str = r#"
[[feature]]
name = "user_space_views_30m"
entity = "user+space"
source = "view"
aggregation = "count"
window = "30m"

[[feature]]
name = "doc_popularity"
entity = "doc"
source = "view"
aggregation = "decayed_count"
half_life = "10m"

[[feature]]
name = "doc_editors_1h"
entity = "doc"
source = "edit"
aggregation = "distinct_users"
window = "1h"

[[feature]]
name = "user_last_click"
entity = "user"
source = "click"
aggregation = "last"
ttl = "2h"
"#;

const FEATURES: [&str; 4] = [
    "user_space_views_30m",
    "doc_popularity",
    "doc_editors_1h",
    "user_last_click",
];

/// Rows in the test: enough for several Parquet row groups of `GROUP`.
const ROWS: usize = 40;
const GROUP: usize = 16;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `n` events of the last 50 minutes over 5 users, 7 docs, 2 spaces.
fn events(n: usize, now: i64) -> Vec<u8> {
    let kinds = ["view", "view", "edit", "click"];
    let lines: Vec<String> = (0..n as u64)
        .map(|i| {
            let x = 17u64
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i.wrapping_mul(1442695040888963407));
            let kind = kinds[(x >> 7) as usize % kinds.len()];
            let user = format!("u:{}", (x >> 13) % 5);
            let doc = format!("p-{}", (x >> 19) % 7);
            let space = ["ENG", "OPS"][((x >> 23) % 2) as usize];
            let ts = now - ((x >> 29) % 3_000_000) as i64;
            format!(
                r#"{{"kind":"{kind}","user":"{user}","doc":"{doc}","space":"{space}","ts":"{}","value":{}}}"#,
                tessera_proto::event::format_ts_millis(ts),
                (x >> 41) % 100
            )
        })
        .collect();
    lines.join("\n").into_bytes()
}

/// One input row: query id, entity, time (epoch ms), an optional label.
struct Row {
    query: String,
    user: String,
    space: String,
    doc: String,
    ts_ms: i64,
    label: Option<i64>,
}

/// Rows spread over the last hour, one before every event and one long after.
fn rows(now: i64) -> Vec<Row> {
    (0..ROWS)
        .map(|i| Row {
            query: format!("q{}", i / 4),
            user: format!("u:{}", i % 5),
            space: ["ENG", "OPS"][i % 2].to_string(),
            doc: format!("p-{}", i % 7),
            ts_ms: match i {
                0 => 0,
                1 => 4_102_444_800_000, // 2100-01-01
                // Millisecond precision, not on a second boundary.
                _ => now - (i as i64) * 97_003,
            },
            label: (i % 3 != 0).then_some((i % 2) as i64),
        })
        .collect()
}

fn rows_csv(rows: &[Row]) -> String {
    let mut out = String::from("query,user,space,doc,ts,label\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.query,
            r.user,
            r.space,
            r.doc,
            tessera_proto::event::format_ts_millis(r.ts_ms),
            r.label.map(|l| l.to_string()).unwrap_or_default()
        ));
    }
    out
}

/// The same rows as Parquet: `ts` a microsecond UTC timestamp, `label` a
/// nullable Int64, several row groups.
fn rows_parquet(rows: &[Row]) -> (SchemaRef, RecordBatch, Vec<u8>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("query", DataType::Utf8, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("space", DataType::Utf8, true),
        Field::new("doc", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("label", DataType::Int64, true),
    ]));
    let strings = |f: fn(&Row) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let ts =
        TimestampMicrosecondArray::from(rows.iter().map(|r| r.ts_ms * 1000).collect::<Vec<_>>())
            .with_timezone("UTC");
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            strings(|r| r.query.as_str()),
            strings(|r| r.user.as_str()),
            strings(|r| r.space.as_str()),
            strings(|r| r.doc.as_str()),
            Arc::new(ts),
            Arc::new(rows.iter().map(|r| r.label).collect::<Int64Array>()),
        ],
    )
    .expect("batch");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(GROUP))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).expect("writer");
    w.write(&batch).expect("write");
    let bytes = w.into_inner().expect("close");
    (schema, batch, bytes)
}

/// The feature columns of a CSV the CLI wrote: the last `FEATURES.len()`
/// cells of each line, empty = null.
fn csv_values(text: &str) -> Vec<Vec<Option<u64>>> {
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    assert!(header.ends_with(&FEATURES.join(",")), "{header}");
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            cells[cells.len() - FEATURES.len()..]
                .iter()
                .map(|c| (!c.is_empty()).then(|| c.parse::<f64>().expect("a number").to_bits()))
                .collect()
        })
        .collect()
}

/// A Parquet output's feature columns (bit patterns, null = None) and the
/// whole table as one batch.
fn parquet_values(bytes: Vec<u8>) -> (RecordBatch, Vec<Vec<Option<u64>>>) {
    let table = read_parquet(bytes).expect("a readable Parquet output");
    let all =
        tessera_client::parquet_rows::arrow::compute::concat_batches(&table.schema, &table.batches)
            .expect("concat");
    let first = all.num_columns() - FEATURES.len();
    for (j, name) in FEATURES.iter().enumerate() {
        let field = all.schema().field(first + j).clone();
        assert_eq!(field.name(), name);
        assert_eq!(field.data_type(), &DataType::Float64);
        assert!(field.is_nullable());
    }
    let values = (0..all.num_rows())
        .map(|r| {
            (0..FEATURES.len())
                .map(|j| {
                    let col = all.column(first + j).as_primitive::<Float64Type>();
                    col.is_valid(r).then(|| col.value(r).to_bits())
                })
                .collect()
        })
        .collect();
    (all, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn features_historical_parquet() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    cluster.create_tenant("acme", &["us-east"], 2).await;
    let router = tessera_tests::routers::start_inproc_router(&cluster, "us-east", |_| {}).await;
    let addr = router.local_addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().to_string();

    std::fs::write(path("features.toml"), TOML).expect("write");
    eventually(SETTLE, "features apply", || async {
        let out = cli(&[
            "--router",
            &addr,
            "features",
            "apply",
            "acme",
            &path("features.toml"),
        ])
        .await;
        Ok::<_, String>(out.status.success().then_some(()))
    })
    .await;
    let now = now_ms();
    std::fs::write(path("events.jsonl"), events(60, now)).expect("write");
    let out = cli(&[
        "--router",
        &addr,
        "events",
        "acme",
        &path("events.jsonl"),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let written: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(written["acked"], 60);
    let token = written["token"].as_str().unwrap_or_default().to_string();

    let rows = rows(now);
    std::fs::write(path("rows.csv"), rows_csv(&rows)).expect("write");
    let (schema, input, bytes) = rows_parquet(&rows);
    std::fs::write(path("rows.parquet"), bytes).expect("write");
    let features = FEATURES.join(",");
    let historical = |rows: String, out: String| {
        let (addr, token, features) = (addr.clone(), token.clone(), features.clone());
        async move {
            cli(&[
                "--router",
                &addr,
                "features",
                "historical",
                "acme",
                "--rows",
                &rows,
                "--features",
                &features,
                "--out",
                &out,
                "--token",
                &token,
            ])
            .await
        }
    };

    // The reference: CSV in, CSV out.
    let out = historical(path("rows.csv"), path("ref.csv")).await;
    assert!(out.status.success(), "{out:?}");
    let reference = csv_values(&std::fs::read_to_string(path("ref.csv")).expect("ref.csv"));
    assert_eq!(reference.len(), ROWS);
    let flat: Vec<Option<u64>> = reference.iter().flatten().copied().collect();
    assert!(flat.iter().any(Option::is_none), "some nulls");
    assert!(
        flat.iter().flatten().any(|b| f64::from_bits(*b) > 0.0),
        "some values"
    );
    assert!(
        flat.iter()
            .flatten()
            .any(|b| f64::from_bits(*b).fract() != 0.0),
        "some non-integer values (decayed counts)"
    );

    // Parquet in, Parquet out: the same values bit for bit, the input
    // columns unchanged (names, types, order, values, nulls).
    let out = historical(path("rows.parquet"), path("out.parquet")).await;
    assert!(out.status.success(), "{out:?}");
    let (all, values) = parquet_values(std::fs::read(path("out.parquet")).expect("out.parquet"));
    assert_eq!(values, reference, "Parquet values equal the CSV path's");
    assert_eq!(all.num_columns(), schema.fields().len() + FEATURES.len());
    for (c, field) in schema.fields().iter().enumerate() {
        assert_eq!(all.schema().field(c), field.as_ref(), "column {c}");
        assert_eq!(
            all.column(c).as_ref(),
            input.column(c).as_ref(),
            "column {c}"
        );
    }

    // CSV in, Parquet out: the input columns as UTF-8, the same values.
    let out = historical(path("rows.csv"), path("out2.PARQUET")).await;
    assert!(out.status.success(), "{out:?}");
    let (all, values) = parquet_values(std::fs::read(path("out2.PARQUET")).expect("out2"));
    assert_eq!(values, reference);
    for c in 0..schema.fields().len() {
        assert_eq!(all.schema().field(c).data_type(), &DataType::Utf8);
    }
    let users: Vec<&str> = all.column(1).as_string::<i32>().iter().flatten().collect();
    let want: Vec<&str> = rows.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(users, want, "rows in order");

    // Parquet in, CSV out: the same cells.
    let out = historical(path("rows.parquet"), path("out3.csv")).await;
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(path("out3.csv")).expect("out3.csv");
    assert_eq!(csv_values(&text), reference);
    assert!(
        text.starts_with(&format!("query,user,space,doc,ts,label,{features}\n")),
        "{text}"
    );

    // Unknown extensions: exit 2, one clear line, nothing written.
    for (rows_file, out_file) in [
        (path("rows.csv"), path("out.txt")),
        (path("rows.parquet"), path("out")),
        (path("rows.tsv"), path("out4.csv")),
    ] {
        let out = historical(rows_file, out_file.clone()).await;
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("use a .csv or .parquet file") && stderr.lines().count() == 1,
            "{stderr}"
        );
        assert!(!std::path::Path::new(&out_file).exists(), "{out_file}");
    }

    // A bad timestamp string names its row; nothing is written.
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("ts", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["u:1", "u:2", "u:3"])),
            Arc::new(StringArray::from(vec![
                "2026-01-01T00:00:00Z",
                "5",
                "yesterday",
            ])),
        ],
    )
    .expect("batch");
    let mut w = ArrowWriter::try_new(Vec::new(), schema, None).expect("writer");
    w.write(&batch).expect("write");
    std::fs::write(path("bad.parquet"), w.into_inner().expect("close")).expect("write");
    let out = historical(path("bad.parquet"), path("bad-out.parquet")).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("row 3") && stderr.contains("yesterday"),
        "{stderr}"
    );
    assert!(!std::path::Path::new(&path("bad-out.parquet")).exists());
}
