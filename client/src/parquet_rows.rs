//! Parquet rows for `tessera features historical` (DESIGN.md
//! "features.toml": "`.parquet` works as well as `.csv`").
//!
//! Training sets live in Parquet more often than in CSV, and a round trip
//! through CSV loses column types (timestamps, integers, nulls). So the rows
//! file and the output file may each be `.csv` or `.parquet`, chosen by
//! extension: a Parquet input's columns are carried through with their Arrow
//! types and order, and each feature becomes one nullable Float64 column,
//! so a value is bit for bit the value the CSV path prints.
//!
//! CSV input and output keep the exact behaviour of
//! [`parse_rows_csv`](crate::features::parse_rows_csv) and
//! [`format_rows_csv`](crate::features::format_rows_csv); this module adds
//! the Parquet side and the two crossings (CSV in, Parquet out and back).

use crate::error::ClientError;
use crate::features::{EntityKey, HistoricalRow};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

/// The `arrow` crate this module is built with, re-exported so callers (and
/// the integration tests) build and inspect batches with the same version.
pub use arrow;
/// The `parquet` crate this module is built with, re-exported for the same
/// reason as [`arrow`](mod@arrow).
pub use parquet;

/// The entity columns a rows file may have; each one absent means "empty".
const ENTITY_COLUMNS: [&str; 3] = ["user", "space", "doc"];

/// Which file format a `--rows` or `--out` path is read or written in.
///
/// Chosen by extension alone so that the two files are independent (CSV in
/// and Parquet out is a normal way to build a training set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsFormat {
    /// Comma-separated text with a header; also `-` (stdin / stdout).
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl RowsFormat {
    /// The format of `path` by its extension (case-insensitive); `-` is CSV
    /// (stdin or stdout). Any other extension is bad input, so that a typo
    /// fails before anything is read from the cluster or written.
    pub fn of_path(path: &Path) -> Result<Self, ClientError> {
        if path.as_os_str() == "-" {
            return Ok(RowsFormat::Csv);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(RowsFormat::Csv),
            Some("parquet") => Ok(RowsFormat::Parquet),
            _ => Err(ClientError::InvalidInput(format!(
                "{}: unknown file type; use a .csv or .parquet file (or - for CSV on stdin/stdout)",
                path.display()
            ))),
        }
    }
}

/// A rows table as Arrow data: its schema and its batches, in row order.
///
/// This is what a Parquet rows file reads into, and what the output is
/// built from, so the input columns leave exactly as they came in.
#[derive(Debug, Clone)]
pub struct RowsTable {
    /// The columns, with names, types and metadata as read.
    pub schema: SchemaRef,
    /// The rows, in file order (one batch per reader batch, across row groups).
    pub batches: Vec<RecordBatch>,
}

impl RowsTable {
    /// Number of rows over all batches.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Reads a whole Parquet file into a [`RowsTable`], keeping row order across
/// row groups. Unreadable data is bad input: the caller's file is at fault.
pub fn read_parquet(data: impl Into<Bytes>) -> Result<RowsTable, ClientError> {
    let bad = |e: &dyn std::fmt::Display| {
        ClientError::InvalidInput(format!("rows file is not a readable Parquet file: {e}"))
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(data.into()).map_err(|e| bad(&e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| bad(&e))?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
    Ok(RowsTable { schema, batches })
}

/// Reads the `historical` rows of a Parquet file: `ts` (a UTF-8 RFC 3339 or
/// epoch-milliseconds string, or an Arrow timestamp of any unit, with or
/// without a time zone, taken as UTC) and any of `user`, `space`, `doc`
/// (UTF-8; null is empty). Returns the table, to write back out, and the rows.
pub fn parse_rows_parquet(
    data: impl Into<Bytes>,
) -> Result<(RowsTable, Vec<HistoricalRow>), ClientError> {
    let table = read_parquet(data)?;
    let rows = rows_of_table(&table)?;
    Ok((table, rows))
}

/// The `historical` rows of an Arrow table (see [`parse_rows_parquet`]).
pub fn rows_of_table(table: &RowsTable) -> Result<Vec<HistoricalRow>, ClientError> {
    let col = |name: &str| table.schema.index_of(name).ok();
    let ts = col("ts").ok_or_else(|| {
        let names: Vec<&str> = table
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        ClientError::InvalidInput(format!(
            "rows file has no `ts` column (its columns: {})",
            names.join(", ")
        ))
    })?;
    let entity_cols: Vec<Option<usize>> = ENTITY_COLUMNS.iter().map(|c| col(c)).collect();
    for (name, i) in ENTITY_COLUMNS.iter().zip(&entity_cols) {
        if let Some(i) = i {
            let dt = table.schema.field(*i).data_type();
            if !is_string_type(dt) {
                return Err(ClientError::InvalidInput(format!(
                    "rows column `{name}` is {dt}: it must hold UTF-8 strings"
                )));
            }
        }
    }
    let ts_type = table.schema.field(ts).data_type().clone();
    if !is_string_type(&ts_type) && !matches!(ts_type, DataType::Timestamp(..)) {
        return Err(ClientError::InvalidInput(format!(
            "rows column `ts` is {ts_type}: it must be an RFC 3339 string or a timestamp"
        )));
    }

    let mut rows = Vec::with_capacity(table.num_rows());
    let mut first_row = 0usize;
    for batch in &table.batches {
        let strings: Vec<Option<StringArray>> = entity_cols
            .iter()
            .map(|i| i.map(|i| to_utf8(batch.column(i))).transpose())
            .collect::<Result<_, _>>()?;
        let ts_ms = ts_millis(batch.column(ts), first_row)?;
        for (r, ts_ms) in ts_ms.into_iter().enumerate() {
            let cell = |k: usize| -> String {
                strings[k]
                    .as_ref()
                    .filter(|a| a.is_valid(r))
                    .map(|a| a.value(r).to_string())
                    .unwrap_or_default()
            };
            rows.push(HistoricalRow {
                entity: EntityKey {
                    user: cell(0),
                    space: cell(1),
                    doc: cell(2),
                },
                ts_ms,
            });
        }
        first_row += batch.num_rows();
    }
    Ok(rows)
}

/// Whether `dt` holds UTF-8 strings (plain, large, view, or dictionary-encoded,
/// as pandas categoricals are).
fn is_string_type(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string_type(values),
        _ => false,
    }
}

/// A string-typed column as a plain UTF-8 array (checked by the caller).
fn to_utf8(col: &ArrayRef) -> Result<StringArray, ClientError> {
    let cast = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| {
        ClientError::InvalidInput(format!("rows column cannot be read as UTF-8: {e}"))
    })?;
    cast.as_string_opt::<i32>().cloned().ok_or_else(|| {
        ClientError::Internal("a cast to Utf8 did not produce a string array".into())
    })
}

/// The `ts` column of one batch as epoch milliseconds (floored, like
/// chrono's `timestamp_millis`). `first_row` numbers rows in messages.
fn ts_millis(col: &ArrayRef, first_row: usize) -> Result<Vec<i64>, ClientError> {
    let row_no = |r: usize| first_row + r + 1;
    let null =
        |r: usize| ClientError::InvalidInput(format!("rows file row {}: ts is null", row_no(r)));
    match col.data_type() {
        DataType::Timestamp(unit, _) => {
            // Arrow stores instants as UTC whatever the zone says; without a
            // zone the value is taken as UTC too.
            let raw = timestamp_values(col.as_ref(), *unit);
            let to_ms = |v: i64| match unit {
                TimeUnit::Second => v.checked_mul(1000),
                TimeUnit::Millisecond => Some(v),
                TimeUnit::Microsecond => Some(v.div_euclid(1000)),
                TimeUnit::Nanosecond => Some(v.div_euclid(1_000_000)),
            };
            raw.into_iter()
                .enumerate()
                .map(|(r, v)| {
                    let v = v.ok_or_else(|| null(r))?;
                    to_ms(v).ok_or_else(|| {
                        ClientError::InvalidInput(format!(
                            "rows file row {}: ts {v} {unit:?}s is out of range",
                            row_no(r)
                        ))
                    })
                })
                .collect()
        }
        _ => {
            let strings = to_utf8(col)?;
            (0..strings.len())
                .map(|r| {
                    if strings.is_null(r) {
                        return Err(null(r));
                    }
                    let text = strings.value(r).trim();
                    text.parse::<i64>()
                        .ok()
                        .or_else(|| tessera_proto::event::parse_ts_millis(text))
                        .ok_or_else(|| {
                            ClientError::InvalidInput(format!(
                                "rows file row {}: ts {text:?} is neither RFC 3339 nor epoch milliseconds",
                                row_no(r)
                            ))
                        })
                })
                .collect()
        }
    }
}

/// The raw values of a timestamp column of `unit` (null as `None`).
fn timestamp_values(col: &dyn Array, unit: TimeUnit) -> Vec<Option<i64>> {
    match unit {
        TimeUnit::Second => col.as_primitive::<TimestampSecondType>().iter().collect(),
        TimeUnit::Millisecond => col
            .as_primitive::<TimestampMillisecondType>()
            .iter()
            .collect(),
        TimeUnit::Microsecond => col
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect(),
        TimeUnit::Nanosecond => col
            .as_primitive::<TimestampNanosecondType>()
            .iter()
            .collect(),
    }
}

/// CSV rows (as [`parse_rows_csv`](crate::features::parse_rows_csv) returns
/// them) as an Arrow table of UTF-8 columns, for writing CSV input to Parquet.
/// Cells are split and trimmed exactly as the CSV parser reads them.
pub fn csv_table(header: &str, raw: &[String]) -> Result<RowsTable, ClientError> {
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut columns: Vec<Vec<&str>> = vec![Vec::with_capacity(raw.len()); names.len()];
    for (n, line) in raw.iter().enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != names.len() {
            return Err(ClientError::InvalidInput(format!(
                "rows line {}: {} cells, the header has {}",
                n + 2,
                cells.len(),
                names.len()
            )));
        }
        for (column, cell) in columns.iter_mut().zip(cells) {
            column.push(cell);
        }
    }
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| ClientError::Internal(format!("cannot build the rows table: {e}")))?;
    Ok(RowsTable {
        schema,
        batches: vec![batch],
    })
}

/// The output schema: the input columns as they are, then one nullable
/// Float64 column per feature. A feature named like an input column (or
/// twice) is bad input, since a Parquet file's columns are looked up by name.
pub fn output_schema(input: &Schema, features: &[String]) -> Result<SchemaRef, ClientError> {
    let mut seen = HashSet::new();
    for name in input
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .chain(features.iter().map(String::as_str))
    {
        if !seen.insert(name) {
            return Err(ClientError::InvalidInput(format!(
                "column {name:?} would appear twice in the Parquet output; rename the input column or drop the repeated feature"
            )));
        }
    }
    let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
    fields.extend(
        features
            .iter()
            .map(|f| Arc::new(Field::new(f, DataType::Float64, true))),
    );
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        input.metadata().clone(),
    )))
}

/// Checks that `values` has one row per input row and one value per feature,
/// so a short answer can never shift values onto the wrong rows.
fn check_shape(
    rows: usize,
    features: &[String],
    values: &[Vec<Option<f64>>],
) -> Result<(), ClientError> {
    if values.len() != rows {
        return Err(ClientError::Internal(format!(
            "{} value rows for {rows} input rows",
            values.len()
        )));
    }
    if let Some((r, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| v.len() != features.len())
    {
        return Err(ClientError::Internal(format!(
            "row {}: {} values for {} features",
            r + 1,
            v.len(),
            features.len()
        )));
    }
    Ok(())
}

/// Writes the input table plus one nullable Float64 column per feature
/// (`None` is null) as Parquet (Snappy), same rows in the same order.
pub fn format_rows_parquet(
    table: &RowsTable,
    features: &[String],
    values: &[Vec<Option<f64>>],
) -> Result<Vec<u8>, ClientError> {
    check_shape(table.num_rows(), features, values)?;
    let schema = output_schema(&table.schema, features)?;
    let internal = |e: &dyn std::fmt::Display| {
        ClientError::Internal(format!("cannot write the Parquet output: {e}"))
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).map_err(|e| internal(&e))?;
    let mut first_row = 0usize;
    for batch in &table.batches {
        let n = batch.num_rows();
        let block = &values[first_row..first_row + n];
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for j in 0..features.len() {
            let col: Float64Array = block.iter().map(|row| row[j]).collect();
            columns.push(Arc::new(col));
        }
        let out = RecordBatch::try_new(schema.clone(), columns).map_err(|e| internal(&e))?;
        writer.write(&out).map_err(|e| internal(&e))?;
        first_row += n;
    }
    writer.into_inner().map_err(|e| internal(&e))
}

/// Writes the input table plus one column per feature as CSV, in the CSV
/// path's style (a header, `,` between cells, null as an empty cell, feature
/// values printed as Rust prints `f64`, which reads back bit for bit).
/// Timestamps are written as RFC 3339 UTC so the file reads back as rows;
/// a cell with a comma, quote or line break is quoted (RFC 4180).
pub fn format_table_csv(
    table: &RowsTable,
    features: &[String],
    values: &[Vec<Option<f64>>],
) -> Result<String, ClientError> {
    check_shape(table.num_rows(), features, values)?;
    let mut out = String::new();
    let header: Vec<String> = table
        .schema
        .fields()
        .iter()
        .map(|f| csv_cell(f.name()))
        .chain(features.iter().map(|f| csv_cell(f)))
        .collect();
    out.push_str(&header.join(","));
    out.push('\n');
    let options = FormatOptions::default().with_null("");
    let mut first_row = 0usize;
    for batch in &table.batches {
        let cells: Vec<CellFormatter> = batch
            .columns()
            .iter()
            .map(|c| CellFormatter::new(c.as_ref(), &options))
            .collect::<Result<_, _>>()?;
        for r in 0..batch.num_rows() {
            let mut line: Vec<String> = cells.iter().map(|c| csv_cell(&c.cell(r))).collect();
            line.extend(
                values[first_row + r]
                    .iter()
                    .map(|v| v.map(|v| v.to_string()).unwrap_or_default()),
            );
            out.push_str(&line.join(","));
            out.push('\n');
        }
        first_row += batch.num_rows();
    }
    Ok(out)
}

/// Renders one column's cells as text: timestamps as RFC 3339 UTC (Arrow's
/// own rendering has no zone for zone-less timestamps, which would not read
/// back), everything else as Arrow displays it.
enum CellFormatter<'a> {
    /// A timestamp column: the values in `unit`, null as `None`.
    Timestamp(Vec<Option<i64>>, TimeUnit),
    /// Any other column.
    Arrow(ArrayFormatter<'a>),
}

impl<'a> CellFormatter<'a> {
    fn new(col: &'a dyn Array, options: &FormatOptions<'a>) -> Result<Self, ClientError> {
        Ok(match col.data_type() {
            DataType::Timestamp(unit, _) => {
                let v = timestamp_values(col, *unit);
                CellFormatter::Timestamp(v, *unit)
            }
            _ => CellFormatter::Arrow(ArrayFormatter::try_new(col, options).map_err(|e| {
                ClientError::InvalidInput(format!(
                    "a {} column cannot be written as CSV: {e}; write .parquet instead",
                    col.data_type()
                ))
            })?),
        })
    }

    fn cell(&self, r: usize) -> String {
        match self {
            CellFormatter::Timestamp(v, unit) => v
                .get(r)
                .copied()
                .flatten()
                .map(|v| rfc3339(v, *unit))
                .unwrap_or_default(),
            CellFormatter::Arrow(f) => f.value(r).to_string(),
        }
    }
}

/// A timestamp as RFC 3339 UTC with as many fraction digits as it needs; the
/// raw number if it is outside chrono's range.
fn rfc3339(v: i64, unit: TimeUnit) -> String {
    let (secs, nanos) = match unit {
        TimeUnit::Second => (v, 0),
        TimeUnit::Millisecond => (v.div_euclid(1000), v.rem_euclid(1000) * 1_000_000),
        TimeUnit::Microsecond => (v.div_euclid(1_000_000), v.rem_euclid(1_000_000) * 1000),
        TimeUnit::Nanosecond => (v.div_euclid(1_000_000_000), v.rem_euclid(1_000_000_000)),
    };
    u32::try_from(nanos)
        .ok()
        .and_then(|n| chrono::DateTime::from_timestamp(secs, n))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| v.to_string())
}

/// One CSV cell: as is, or quoted with inner quotes doubled when it holds a
/// comma, a quote or a line break.
fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The rows of `historical` as read from either format, kept so the output
/// (in either format) carries the input through unchanged.
#[derive(Debug, Clone)]
pub enum RowsInput {
    /// A CSV rows file: its header and its raw lines.
    Csv {
        /// The header line.
        header: String,
        /// The data lines, as read (without line ends).
        raw: Vec<String>,
    },
    /// A Parquet rows file, as Arrow data.
    Parquet(RowsTable),
}

impl RowsInput {
    /// Reads a rows file of `format` from its bytes; `name` is the file's
    /// name for messages.
    pub fn parse(
        format: RowsFormat,
        data: Vec<u8>,
        name: &str,
    ) -> Result<(Self, Vec<HistoricalRow>), ClientError> {
        match format {
            RowsFormat::Csv => {
                let text = String::from_utf8(data)
                    .map_err(|e| ClientError::InvalidInput(format!("{name} is not UTF-8: {e}")))?;
                let (header, raw, rows) = crate::features::parse_rows_csv(&text)?;
                Ok((RowsInput::Csv { header, raw }, rows))
            }
            RowsFormat::Parquet => {
                let (table, rows) = parse_rows_parquet(data)?;
                Ok((RowsInput::Parquet(table), rows))
            }
        }
    }

    /// Checks before any request that the output can be written, so bad
    /// column names fail with nothing written and nothing asked.
    pub fn check_output(&self, format: RowsFormat, features: &[String]) -> Result<(), ClientError> {
        match (format, self) {
            (RowsFormat::Csv, _) => Ok(()),
            (RowsFormat::Parquet, RowsInput::Csv { header, raw }) => {
                output_schema(&csv_table(header, &raw[..0])?.schema, features).map(|_| ())
            }
            (RowsFormat::Parquet, RowsInput::Parquet(table)) => {
                output_schema(&table.schema, features).map(|_| ())
            }
        }
    }

    /// The output file's bytes: the input rows, in order, plus one column
    /// per feature, in `format`.
    pub fn format(
        &self,
        format: RowsFormat,
        features: &[String],
        values: &[Vec<Option<f64>>],
    ) -> Result<Vec<u8>, ClientError> {
        match (format, self) {
            (RowsFormat::Csv, RowsInput::Csv { header, raw }) => {
                check_shape(raw.len(), features, values)?;
                Ok(crate::features::format_rows_csv(header, raw, features, values).into_bytes())
            }
            (RowsFormat::Csv, RowsInput::Parquet(table)) => {
                format_table_csv(table, features, values).map(String::into_bytes)
            }
            (RowsFormat::Parquet, RowsInput::Csv { header, raw }) => {
                format_rows_parquet(&csv_table(header, raw)?, features, values)
            }
            (RowsFormat::Parquet, RowsInput::Parquet(table)) => {
                format_rows_parquet(table, features, values)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// Writes `batches` as Parquet with at most `group_rows` rows per row group.
    fn write(schema: SchemaRef, batches: &[RecordBatch], group_rows: usize) -> Vec<u8> {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props)).expect("writer");
        for b in batches {
            w.write(b).expect("write");
        }
        w.into_inner().expect("close")
    }

    fn row_groups(data: &[u8]) -> usize {
        SerializedFileReader::new(Bytes::copy_from_slice(data))
            .expect("reader")
            .metadata()
            .num_row_groups()
    }

    fn features() -> Vec<String> {
        vec!["f".to_string(), "g".to_string()]
    }

    /// `n` rows: user, a nullable space, ts in `unit`, an Int64 label.
    fn table(n: usize, unit: TimeUnit, tz: Option<&str>) -> (SchemaRef, RecordBatch) {
        let ts_type = DataType::Timestamp(unit, tz.map(Into::into));
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("space", DataType::Utf8, true),
            Field::new("ts", ts_type.clone(), false),
            Field::new("label", DataType::Int64, true),
        ]));
        let per_ms: i64 = match unit {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 1,
            TimeUnit::Microsecond => 1000,
            TimeUnit::Nanosecond => 1_000_000,
        };
        let per_s: i64 = match unit {
            TimeUnit::Second => 1,
            _ => per_ms * 1000,
        };
        let user: StringArray = (0..n).map(|i| Some(format!("u:{i}"))).collect();
        let space: StringArray = (0..n)
            .map(|i| (i % 3 != 0).then(|| format!("S{i}")))
            .collect();
        // 2026-01-01T00:00:00Z + i seconds + 7 ms (where the unit has ms).
        let ts: Vec<i64> = (0..n as i64)
            .map(|i| (1_767_225_600 + i) * per_s + 7 * per_ms)
            .collect();
        let ts = arrow::compute::cast(&(Arc::new(Int64Array::from(ts)) as ArrayRef), &ts_type)
            .expect("cast ts");
        let label: Int64Array = (0..n as i64).map(|i| (i % 2 == 0).then_some(i)).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(user), Arc::new(space), ts, Arc::new(label)],
        )
        .expect("batch");
        (schema, batch)
    }

    fn values(n: usize) -> Vec<Vec<Option<f64>>> {
        (0..n)
            .map(|i| vec![(i % 4 != 1).then_some(i as f64 / 3.0), Some(-0.0)])
            .collect()
    }

    #[test]
    fn extensions_choose_the_format() {
        let of = |p: &str| RowsFormat::of_path(Path::new(p));
        assert_eq!(of("a.csv").expect("csv"), RowsFormat::Csv);
        assert_eq!(of("a.CSV").expect("csv"), RowsFormat::Csv);
        assert_eq!(of("dir.x/a.Parquet").expect("parquet"), RowsFormat::Parquet);
        assert_eq!(of("-").expect("stdio"), RowsFormat::Csv);
        for bad in ["a.txt", "a", "a.parquet.gz", "a.pq"] {
            let e = of(bad).expect_err(bad);
            assert_eq!(e.exit_code(), crate::exit::BAD_INPUT);
            assert!(e.to_string().contains(".parquet"), "{e}");
        }
    }

    #[test]
    fn parquet_round_trip_keeps_columns_rows_and_nulls() {
        let (schema, batch) = table(10, TimeUnit::Millisecond, None);
        let file = write(schema.clone(), std::slice::from_ref(&batch), 3);
        assert_eq!(row_groups(&file), 4);
        let (t, rows) = parse_rows_parquet(file).expect("parse");
        assert_eq!(rows.len(), 10);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.entity.user, format!("u:{i}"), "order kept");
            let space = if i % 3 == 0 {
                String::new()
            } else {
                format!("S{i}")
            };
            assert_eq!(row.entity.space, space, "null is empty");
            assert_eq!(row.entity.doc, "", "absent is empty");
            assert_eq!(row.ts_ms, 1_767_225_600_000 + i as i64 * 1000 + 7);
        }
        let vals = values(10);
        let out = format_rows_parquet(&t, &features(), &vals).expect("write");
        let back = read_parquet(out).expect("read back");
        assert_eq!(back.num_rows(), 10);
        let want = output_schema(&schema, &features()).expect("schema");
        assert_eq!(back.schema.fields(), want.fields(), "names, types, order");
        let all = arrow::compute::concat_batches(&back.schema, &back.batches).expect("concat");
        for c in 0..4 {
            assert_eq!(
                all.column(c).as_ref(),
                batch.column(c).as_ref(),
                "column {c}"
            );
        }
        for (j, _) in features().iter().enumerate() {
            let col = all
                .column(4 + j)
                .as_primitive::<arrow::datatypes::Float64Type>();
            for (r, v) in vals.iter().enumerate() {
                let got = col.is_valid(r).then(|| col.value(r));
                assert_eq!(got.map(f64::to_bits), v[j].map(f64::to_bits), "row {r}");
            }
        }
    }

    #[test]
    fn rows_keep_their_order_across_row_groups_and_batches() {
        // 2600 rows in groups of 1000: more than one reader batch (1024) too.
        let (schema, batch) = table(2600, TimeUnit::Second, None);
        let file = write(
            schema,
            &[batch.slice(0, 1500), batch.slice(1500, 1100)],
            1000,
        );
        assert_eq!(row_groups(&file), 3);
        let (t, rows) = parse_rows_parquet(file).expect("parse");
        assert!(t.batches.len() > 1);
        let users: Vec<String> = rows.iter().map(|r| r.entity.user.clone()).collect();
        let want: Vec<String> = (0..2600).map(|i| format!("u:{i}")).collect();
        assert_eq!(users, want);
        let vals = values(2600);
        let out = read_parquet(format_rows_parquet(&t, &features(), &vals).expect("write"))
            .expect("read back");
        let mut r = 0usize;
        for b in &out.batches {
            let users = b.column(0).as_string::<i32>();
            let f = b.column(4).as_primitive::<arrow::datatypes::Float64Type>();
            for k in 0..b.num_rows() {
                assert_eq!(users.value(k), format!("u:{r}"));
                assert_eq!(f.is_valid(k).then(|| f.value(k)), vals[r][0]);
                r += 1;
            }
        }
        assert_eq!(r, 2600);
    }

    #[test]
    fn every_timestamp_unit_and_zone_reads_as_utc_millis() {
        for unit in [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ] {
            for tz in [None, Some("UTC"), Some("+05:30"), Some("America/New_York")] {
                let (schema, batch) = table(3, unit, tz);
                let (_, rows) = parse_rows_parquet(write(schema, &[batch], 10)).expect("parse");
                let extra = if unit == TimeUnit::Second { 0 } else { 7 };
                let ts: Vec<i64> = rows.iter().map(|r| r.ts_ms).collect();
                let want: Vec<i64> = (0..3)
                    .map(|i| 1_767_225_600_000 + i * 1000 + extra)
                    .collect();
                assert_eq!(ts, want, "{unit:?} {tz:?}");
            }
        }
        // Sub-millisecond instants before 1970 floor, as RFC 3339 parsing does.
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        )]));
        let ts = TimestampMicrosecondArray::from(vec![-1_500, 1_500]);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ts)]).expect("batch");
        let (_, rows) = parse_rows_parquet(write(schema, &[batch], 10)).expect("parse");
        assert_eq!(rows[0].ts_ms, -2);
        assert_eq!(
            tessera_proto::event::parse_ts_millis("1969-12-31T23:59:59.9985Z"),
            Some(-2)
        );
        assert_eq!(rows[1].ts_ms, 1);
    }

    #[test]
    fn string_timestamps_and_bad_input_are_named() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("doc", DataType::Utf8, true),
            Field::new("ts", DataType::Utf8, true),
        ]));
        let batch = |ts: Vec<Option<&str>>| {
            let doc: StringArray = ts.iter().map(|_| Some("p-1")).collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(doc), Arc::new(StringArray::from(ts))],
            )
            .expect("batch")
        };
        let good = batch(vec![Some("2026-01-01T00:00:00Z"), Some("5")]);
        let (_, rows) = parse_rows_parquet(write(schema.clone(), &[good], 10)).expect("parse");
        assert_eq!(rows[0].ts_ms, 1_767_225_600_000);
        assert_eq!(rows[1].ts_ms, 5);
        assert_eq!(rows[1].entity.doc, "p-1");

        let bad = write(
            schema.clone(),
            &[
                batch(vec![Some("5"), Some("6")]),
                batch(vec![Some("7"), Some("soon")]),
            ],
            2,
        );
        let e = parse_rows_parquet(bad).expect_err("bad ts");
        assert!(
            e.to_string().contains("row 4") && e.to_string().contains("soon"),
            "{e}"
        );
        let null = write(schema.clone(), &[batch(vec![Some("5"), None])], 2);
        let e = parse_rows_parquet(null).expect_err("null ts");
        assert!(e.to_string().contains("row 2: ts is null"), "{e}");

        let no_ts = Arc::new(Schema::new(vec![Field::new("user", DataType::Utf8, true)]));
        let b = RecordBatch::try_new(
            no_ts.clone(),
            vec![Arc::new(StringArray::from(vec!["u:a"]))],
        )
        .expect("batch");
        let e = parse_rows_parquet(write(no_ts, &[b], 2)).expect_err("no ts");
        assert!(
            e.to_string().contains("no `ts` column (its columns: user)"),
            "{e}"
        );

        let int_user = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Int64, true),
            Field::new("ts", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            int_user.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(StringArray::from(vec!["5"])),
            ],
        )
        .expect("batch");
        let e = parse_rows_parquet(write(int_user, &[b], 2)).expect_err("int user");
        assert!(e.to_string().contains("`user` is Int64"), "{e}");

        let e = parse_rows_parquet(b"user,ts\nu:a,5\n".to_vec()).expect_err("not parquet");
        assert_eq!(e.exit_code(), crate::exit::BAD_INPUT);
    }

    #[test]
    fn entity_columns_may_be_any_string_encoding() {
        use arrow::array::{DictionaryArray, LargeStringArray, StringViewArray};
        use arrow::datatypes::Int32Type;
        let user: DictionaryArray<Int32Type> =
            vec![Some("u:a"), None, Some("u:a")].into_iter().collect();
        let space = LargeStringArray::from(vec![Some("ENG"), Some("OPS"), None]);
        let doc = StringViewArray::from(vec![None, Some("p-2"), Some("p-3")]);
        let ts = StringArray::from(vec!["1", "2", "3"]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", user.data_type().clone(), true),
            Field::new("space", DataType::LargeUtf8, true),
            Field::new("doc", DataType::Utf8View, true),
            Field::new("ts", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(user), Arc::new(space), Arc::new(doc), Arc::new(ts)],
        )
        .expect("batch");
        let file = write(schema.clone(), std::slice::from_ref(&batch), 10);
        let (t, rows) = parse_rows_parquet(file).expect("parse");
        let keys: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.entity.user.as_str(),
                    r.entity.space.as_str(),
                    r.entity.doc.as_str(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [("u:a", "ENG", ""), ("", "OPS", "p-2"), ("u:a", "", "p-3")]
        );
        // Carried through with the types the reader gave back.
        let out = read_parquet(format_rows_parquet(&t, &features(), &values(3)).expect("write"))
            .expect("read back");
        let types: Vec<DataType> = out
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let want: Vec<DataType> = t
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(types[..4], want[..]);
    }

    #[test]
    fn csv_and_parquet_cross_both_ways() {
        let text = "user,space,ts\nu:a,ENG,2026-01-01T00:00:00Z\nu:b, OPS ,5\n";
        let (input, rows) =
            RowsInput::parse(RowsFormat::Csv, text.into(), "rows.csv").expect("csv");
        let vals = vec![vec![Some(2.5), None], vec![None, Some(0.1 + 0.2)]];
        let pq = input
            .format(RowsFormat::Parquet, &features(), &vals)
            .expect("to parquet");
        let (back, back_rows) =
            RowsInput::parse(RowsFormat::Parquet, pq, "out.parquet").expect("read back");
        assert_eq!(back_rows, rows, "the same rows");
        let RowsInput::Parquet(t) = &back else {
            panic!("parquet input");
        };
        let types: Vec<&DataType> = t.schema.fields().iter().map(|f| f.data_type()).collect();
        assert_eq!(
            types,
            [
                &DataType::Utf8,
                &DataType::Utf8,
                &DataType::Utf8,
                &DataType::Float64,
                &DataType::Float64
            ]
        );
        // Parquet → CSV: the CSV path's cells (the input cells are trimmed).
        let csv = back
            .format(
                RowsFormat::Csv,
                &["h".to_string()],
                &[vec![Some(1.0)], vec![None]],
            )
            .expect("to csv");
        assert_eq!(
            String::from_utf8(csv).expect("utf8"),
            "user,space,ts,f,g,h\nu:a,ENG,2026-01-01T00:00:00Z,2.5,,1\nu:b,OPS,5,,0.30000000000000004,\n"
        );
        assert!(back
            .check_output(RowsFormat::Parquet, &["f".into()])
            .is_err());
        assert!(input
            .check_output(RowsFormat::Parquet, &["ts".into()])
            .is_err());
        assert!(input
            .check_output(RowsFormat::Parquet, &["x".into(), "x".into()])
            .is_err());
        assert!(input.check_output(RowsFormat::Csv, &["ts".into()]).is_ok());
        assert!(input
            .format(RowsFormat::Csv, &features(), &vals[..1])
            .is_err());
    }

    #[test]
    fn parquet_to_csv_renders_timestamps_as_rfc3339_and_quotes() {
        let (schema, batch) = table(2, TimeUnit::Nanosecond, Some("+02:00"));
        let (input, rows) = RowsInput::parse(
            RowsFormat::Parquet,
            write(schema, &[batch], 10),
            "r.parquet",
        )
        .expect("parse");
        let csv = String::from_utf8(
            input
                .format(RowsFormat::Csv, &features(), &values(2))
                .expect("csv"),
        )
        .expect("utf8");
        assert_eq!(
            csv,
            "user,space,ts,label,f,g\n\
             u:0,,2026-01-01T00:00:00.007Z,0,0,-0\n\
             u:1,S1,2026-01-01T00:00:01.007Z,,,-0\n"
        );
        let (_, _, again) = crate::features::parse_rows_csv(&csv).expect("reads back");
        assert_eq!(again, rows);
        assert_eq!(csv_cell("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(
            rfc3339(1_500, TimeUnit::Microsecond),
            "1970-01-01T00:00:00.001500Z"
        );
    }
}
