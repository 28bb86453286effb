//! The BSON → Arrow type mapping: one [`ColumnType`] per BSON type, and its Arrow field.
//!
//! | BSON type | [`ColumnType`] | Arrow type | `ARROW:extension:name` |
//! |---|---|---|---|
//! | double | `Double` | `Float64` | |
//! | string | `String` | `Utf8` | |
//! | document | `Document` | `Struct` of its fields | |
//! | array | `Array` | `List` of the widened element type | |
//! | binary (subtype 4, UUID) | `Uuid` | `FixedSizeBinary(16)` | `arrow.uuid` |
//! | binary (subtype 3, legacy UUID) | `LegacyUuid` | `FixedSizeBinary(16)` | `changeflow.bson.legacy_uuid` |
//! | binary (other subtypes) | `Binary` | `Struct{subtype: UInt8, data: Binary}` | `changeflow.bson.binary` |
//! | undefined | `Undefined` | `Null` | `changeflow.bson.undefined` |
//! | ObjectId | `ObjectId` | `FixedSizeBinary(12)` | `changeflow.bson.objectid` |
//! | boolean | `Bool` | `Boolean` | |
//! | UTC datetime | `DateTime` | `Timestamp(Millisecond, "UTC")` | |
//! | null | `Null` | `Null` (a null in any other column) | |
//! | regex | `Regex` | `Struct{pattern: Utf8, options: Utf8}` | `changeflow.bson.regex` |
//! | DBPointer | `DbPointer` | `Struct{namespace: Utf8, id: FixedSizeBinary(12)}` | `changeflow.bson.dbpointer` |
//! | JavaScript code | `JavaScript` | `Utf8` | `changeflow.bson.javascript` |
//! | symbol | `Symbol` | `Utf8` | `changeflow.bson.symbol` |
//! | JavaScript code with scope | `ExtJson` | `Utf8` (canonical Extended JSON) | `changeflow.bson.extjson` |
//! | int32 | `Int32` | `Int32` | |
//! | Timestamp | `Timestamp` | `Struct{t: UInt32, i: UInt32}` | `changeflow.bson.timestamp` |
//! | int64 | `Int64` | `Int64` | |
//! | Decimal128 | `Decimal { precision, scale }` | `Decimal128(p, s)` when every value fits one scale exactly | |
//! | Decimal128 | `DecimalBytes` | `FixedSizeBinary(16)`, the IEEE 754-2008 BID bytes, little-endian | `changeflow.bson.decimal128` |
//! | MinKey / MaxKey | `MinMaxKey` | `Int8`: -1 MinKey, +1 MaxKey | `changeflow.bson.minmaxkey` |
//! | anything (declared catch-all) | `ExtJson` | `Utf8` (canonical Extended JSON) | `changeflow.bson.extjson` |
//! | mixed types, with [`FallbackMode::DenseUnion`](crate::arrow::schema::FallbackMode) | `Union` | dense `Union` of the members' types | |
//!
//! Every column is nullable: a missing field and a BSON null are both an Arrow null. Extension
//! names are field metadata (`ARROW:extension:name`); readers that do not know them see the
//! storage type, with the metadata kept.
//!
//! A Decimal128 fits `Decimal128(p, s)` when it is finite, not negative zero, and its coefficient
//! rescaled to `s` digits after the point is exact and below 10^p (p ≤ 38). Otherwise the column is
//! `DecimalBytes`, which keeps the exact 16 bytes MongoDB stored (NaN, infinities, -0, every
//! exponent).
//!
//! ```
//! use changeflow_sinks::arrow::mapping::ColumnType;
//! use arrow_schema::DataType;
//! let field = ColumnType::ObjectId.field("_id");
//! assert_eq!(field.data_type(), &DataType::FixedSizeBinary(12));
//! assert_eq!(field.metadata()["ARROW:extension:name"], "changeflow.bson.objectid");
//! assert_eq!(ColumnType::Decimal { precision: 5, scale: 2 }.data_type(), DataType::Decimal128(5, 2));
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit, UnionMode};

/// The metadata key naming an Arrow extension type.
pub const EXTENSION_NAME: &str = "ARROW:extension:name";

/// The precision of exact decimal columns (Arrow's `Decimal128` maximum).
pub const DECIMAL_PRECISION: u8 = 38;

/// The column type a BSON value maps to (see the [module docs](self) for the table).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// Only nulls (or nothing) seen so far: Arrow `Null`.
    Null,
    /// BSON double: `Float64`.
    Double,
    /// BSON string: `Utf8`.
    String,
    /// An embedded document: a `Struct` of its fields, in first-seen order.
    Document(Vec<(String, ColumnType)>),
    /// An array: a `List` of its (widened) element type.
    Array(Box<ColumnType>),
    /// Binary of a subtype other than 3 and 4: `Struct{subtype, data}`.
    Binary,
    /// Binary subtype 4 of 16 bytes: `FixedSizeBinary(16)`, `arrow.uuid`.
    Uuid,
    /// Binary subtype 3 of 16 bytes (driver-specific byte order): `FixedSizeBinary(16)`.
    LegacyUuid,
    /// BSON undefined: `Null`, with an extension name.
    Undefined,
    /// ObjectId: `FixedSizeBinary(12)`.
    ObjectId,
    /// Boolean.
    Bool,
    /// UTC datetime: `Timestamp(Millisecond, "UTC")`.
    DateTime,
    /// Regular expression: `Struct{pattern, options}`.
    Regex,
    /// DBPointer: `Struct{namespace, id}`.
    DbPointer,
    /// JavaScript code: `Utf8`.
    JavaScript,
    /// Symbol: `Utf8`.
    Symbol,
    /// int32.
    Int32,
    /// BSON Timestamp: `Struct{t: UInt32, i: UInt32}`.
    Timestamp,
    /// int64.
    Int64,
    /// Decimal128 values that all fit `Decimal128(precision, scale)` exactly.
    Decimal {
        /// Total digits (1..=38).
        precision: u8,
        /// Digits after the point (0..=38).
        scale: i8,
    },
    /// Decimal128 as its exact 16 bytes: `FixedSizeBinary(16)`.
    DecimalBytes,
    /// MinKey (-1) and MaxKey (+1): `Int8`.
    MinMaxKey,
    /// Any value, as canonical Extended JSON: `Utf8`.
    ExtJson,
    /// Values of conflicting types ([`FallbackMode::DenseUnion`](crate::arrow::schema::FallbackMode)):
    /// a dense `Union` with one member per type, named by [`ColumnType::name`].
    Union(Vec<ColumnType>),
}

impl ColumnType {
    /// The Arrow data type of this column type.
    pub fn data_type(&self) -> DataType {
        match self {
            ColumnType::Null | ColumnType::Undefined => DataType::Null,
            ColumnType::Double => DataType::Float64,
            ColumnType::String
            | ColumnType::JavaScript
            | ColumnType::Symbol
            | ColumnType::ExtJson => DataType::Utf8,
            ColumnType::Document(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|(name, ty)| ty.field(name))
                    .collect::<Fields>(),
            ),
            ColumnType::Array(element) => DataType::List(Arc::new(element.field("item"))),
            ColumnType::Binary => DataType::Struct(binary_fields()),
            ColumnType::Uuid | ColumnType::LegacyUuid | ColumnType::DecimalBytes => {
                DataType::FixedSizeBinary(16)
            }
            ColumnType::ObjectId => DataType::FixedSizeBinary(12),
            ColumnType::Bool => DataType::Boolean,
            ColumnType::DateTime => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ColumnType::Regex => DataType::Struct(regex_fields()),
            ColumnType::DbPointer => DataType::Struct(db_pointer_fields()),
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Timestamp => DataType::Struct(timestamp_fields()),
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            ColumnType::MinMaxKey => DataType::Int8,
            ColumnType::Union(members) => DataType::Union(
                members
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| (i as i8, Arc::new(ty.field(ty.name()))))
                    .collect(),
                UnionMode::Dense,
            ),
        }
    }

    /// A short name of the type (the member name in a union).
    pub fn name(&self) -> &'static str {
        match self {
            ColumnType::Null => "null",
            ColumnType::Double => "double",
            ColumnType::String => "string",
            ColumnType::Document(_) => "document",
            ColumnType::Array(_) => "array",
            ColumnType::Binary => "binary",
            ColumnType::Uuid => "uuid",
            ColumnType::LegacyUuid => "legacy_uuid",
            ColumnType::Undefined => "undefined",
            ColumnType::ObjectId => "objectid",
            ColumnType::Bool => "bool",
            ColumnType::DateTime => "date",
            ColumnType::Regex => "regex",
            ColumnType::DbPointer => "dbpointer",
            ColumnType::JavaScript => "javascript",
            ColumnType::Symbol => "symbol",
            ColumnType::Int32 => "int32",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Int64 => "int64",
            ColumnType::Decimal { .. } => "decimal",
            ColumnType::DecimalBytes => "decimal128",
            ColumnType::MinMaxKey => "minmaxkey",
            ColumnType::ExtJson => "extjson",
            ColumnType::Union(_) => "union",
        }
    }

    /// The extension name recorded in the field's metadata, if any.
    pub fn extension_name(&self) -> Option<&'static str> {
        Some(match self {
            ColumnType::Uuid => "arrow.uuid",
            ColumnType::LegacyUuid => "changeflow.bson.legacy_uuid",
            ColumnType::Binary => "changeflow.bson.binary",
            ColumnType::Undefined => "changeflow.bson.undefined",
            ColumnType::ObjectId => "changeflow.bson.objectid",
            ColumnType::Regex => "changeflow.bson.regex",
            ColumnType::DbPointer => "changeflow.bson.dbpointer",
            ColumnType::JavaScript => "changeflow.bson.javascript",
            ColumnType::Symbol => "changeflow.bson.symbol",
            ColumnType::Timestamp => "changeflow.bson.timestamp",
            ColumnType::DecimalBytes => "changeflow.bson.decimal128",
            ColumnType::MinMaxKey => "changeflow.bson.minmaxkey",
            ColumnType::ExtJson => "changeflow.bson.extjson",
            _ => return None,
        })
    }

    /// The nullable Arrow field `name` of this type, with its extension name as metadata.
    pub fn field(&self, name: &str) -> Field {
        let field = Field::new(name, self.data_type(), true);
        match self.extension_name() {
            Some(ext) => field.with_metadata(HashMap::from([(
                EXTENSION_NAME.to_string(),
                ext.to_string(),
            )])),
            None => field,
        }
    }

    /// The column type an Arrow data type declares, for the plain cases (`Int32`, `Int64`,
    /// `Float64`, `Utf8`, `Boolean`, `Timestamp(Millisecond, _)`, `Decimal128(_, s)`,
    /// `FixedSizeBinary(12)` as ObjectId, `FixedSizeBinary(16)` as UUID, `Null`).
    ///
    /// ```
    /// use changeflow_sinks::arrow::mapping::ColumnType;
    /// use arrow_schema::DataType;
    /// assert_eq!(ColumnType::from_arrow(&DataType::Decimal128(10, 4)), Some(ColumnType::Decimal { precision: 10, scale: 4 }));
    /// assert_eq!(ColumnType::from_arrow(&DataType::Float16), None);
    /// ```
    pub fn from_arrow(data_type: &DataType) -> Option<ColumnType> {
        Some(match data_type {
            DataType::Null => ColumnType::Null,
            DataType::Int32 => ColumnType::Int32,
            DataType::Int64 => ColumnType::Int64,
            DataType::Float64 => ColumnType::Double,
            DataType::Utf8 => ColumnType::String,
            DataType::Boolean => ColumnType::Bool,
            DataType::Timestamp(TimeUnit::Millisecond, _) => ColumnType::DateTime,
            DataType::Decimal128(precision, scale)
                if (0..=38).contains(scale) && (1..=DECIMAL_PRECISION).contains(precision) =>
            {
                ColumnType::Decimal {
                    precision: *precision,
                    scale: *scale,
                }
            }
            DataType::FixedSizeBinary(12) => ColumnType::ObjectId,
            DataType::FixedSizeBinary(16) => ColumnType::Uuid,
            DataType::List(item) => {
                ColumnType::Array(Box::new(ColumnType::from_arrow(item.data_type())?))
            }
            DataType::Struct(fields) => ColumnType::Document(
                fields
                    .iter()
                    .map(|f| Some((f.name().clone(), ColumnType::from_arrow(f.data_type())?)))
                    .collect::<Option<_>>()?,
            ),
            _ => return None,
        })
    }
}

/// The children of a binary column.
pub(crate) fn binary_fields() -> Fields {
    Fields::from(vec![
        Field::new("subtype", DataType::UInt8, false),
        Field::new("data", DataType::Binary, false),
    ])
}

/// The children of a regex column.
pub(crate) fn regex_fields() -> Fields {
    Fields::from(vec![
        Field::new("pattern", DataType::Utf8, false),
        Field::new("options", DataType::Utf8, false),
    ])
}

/// The children of a DBPointer column.
pub(crate) fn db_pointer_fields() -> Fields {
    Fields::from(vec![
        Field::new("namespace", DataType::Utf8, false),
        Field::new("id", DataType::FixedSizeBinary(12), false),
    ])
}

/// The children of a BSON Timestamp column (and of a split `_time`).
pub(crate) fn timestamp_fields() -> Fields {
    Fields::from(vec![
        Field::new("t", DataType::UInt32, false),
        Field::new("i", DataType::UInt32, false),
    ])
}

/// A finite Decimal128 as `(coefficient with sign, scale)`: the value is
/// `coefficient × 10^-scale`. `None` for NaN, infinities and negative zero (which no `i128`
/// holds).
///
/// ```
/// use changeflow_sinks::arrow::mapping::decimal_parts;
/// let d: bson::Decimal128 = "-12.50".parse().unwrap();
/// assert_eq!(decimal_parts(&d.bytes()), Some((-1250, 2)));
/// let e: bson::Decimal128 = "1E+3".parse().unwrap();
/// assert_eq!(decimal_parts(&e.bytes()), Some((1, -3)));
/// assert_eq!(decimal_parts(&"NaN".parse::<bson::Decimal128>().unwrap().bytes()), None);
/// ```
pub fn decimal_parts(bytes: &[u8; 16]) -> Option<(i128, i32)> {
    let bits = u128::from_le_bytes(*bytes);
    let negative = bits >> 127 == 1;
    let (exponent, coefficient) = if (bits >> 125) & 0b11 == 0b11 {
        if (bits >> 122) & 0b11110 == 0b11110 {
            return None;
        }
        // Coefficients of this form exceed 10^34: non-canonical, read as zero.
        (((bits >> 111) & 0x3fff) as i32, 0u128)
    } else {
        (((bits >> 113) & 0x3fff) as i32, bits & ((1u128 << 113) - 1))
    };
    if coefficient >= 10u128.pow(34) {
        return Some((0, 6176 - exponent));
    }
    if negative && coefficient == 0 {
        return None;
    }
    let value = coefficient as i128;
    Some((if negative { -value } else { value }, 6176 - exponent))
}

/// `coefficient × 10^-scale` as an `i128` at `target` digits after the point, if exact and within
/// `precision` digits.
pub fn rescale(coefficient: i128, scale: i32, precision: u8, target: i8) -> Option<i128> {
    let limit = 10i128.checked_pow(u32::from(precision.min(DECIMAL_PRECISION)))?;
    let shift = i32::from(target) - scale;
    let value = if shift >= 0 {
        coefficient.checked_mul(10i128.checked_pow(u32::try_from(shift).ok()?)?)?
    } else {
        let divisor = 10i128.checked_pow(u32::try_from(-shift).ok()?)?;
        if coefficient % divisor != 0 {
            return None;
        }
        coefficient / divisor
    };
    (value.abs() < limit).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_parts_agree_with_the_bson_crate_text() {
        for text in [
            "0",
            "1",
            "-1",
            "12.345",
            "1E+5",
            "-0.000001",
            "9999999999999999999999999999999999",
            "1.000000000000000000000000000000000E+6144",
            "1E-6176",
        ] {
            let d: bson::Decimal128 = text.parse().unwrap();
            let (c, s) = decimal_parts(&d.bytes()).unwrap();
            let back: bson::Decimal128 = format!("{c}E{}", -s).parse().unwrap();
            assert_eq!(back.to_string(), d.to_string(), "{text}");
        }
        for text in ["NaN", "Infinity", "-Infinity", "-0"] {
            let d: bson::Decimal128 = text.parse().unwrap();
            assert_eq!(decimal_parts(&d.bytes()), None, "{text}");
        }
    }

    #[test]
    fn rescaling_is_exact_or_refused() {
        assert_eq!(rescale(1250, 2, 38, 4), Some(125_000));
        assert_eq!(rescale(1250, 2, 38, 1), Some(125));
        assert_eq!(rescale(1250, 2, 3, 1), Some(125));
        assert_eq!(rescale(1250, 2, 2, 1), None);
        assert_eq!(rescale(1255, 2, 38, 1), None);
        assert_eq!(rescale(1, -40, 38, 0), None);
        assert_eq!(rescale(-7, -3, 38, 0), Some(-7000));
    }
}
