//! A fast writer of MongoDB Extended JSON v2 (relaxed or canonical) for [`bson::Document`]s.
//!
//! It writes what `mongoexport` / the drivers write, field order preserved:
//!
//! | BSON | relaxed | canonical |
//! |---|---|---|
//! | int32 | `5` | `{"$numberInt": "5"}` |
//! | int64 | `5` (a plain number) | `{"$numberLong": "5"}` |
//! | double | `12.5`, `12.0` (always a `.` or an exponent) | `{"$numberDouble": "12.0"}` |
//! | date | `{"$date": "2023-11-14T22:13:20.000Z"}` (years 1970–9999) | `{"$date": {"$numberLong": "1700000000000"}}` |
//! | ObjectId | `{"$oid": "…"}` | same |
//! | timestamp | `{"$timestamp": {"t": 1, "i": 2}}` | same |
//! | binary | `{"$binary": {"base64": "…", "subType": "04"}}` | same |
//!
//! Non-finite doubles are always `{"$numberDouble": "NaN" | "Infinity" | "-Infinity"}`, and `-0.0`
//! is `{"$numberDouble": "-0.0"}` in relaxed form too (a plain `-0.0` would not survive JSON
//! parsers). Other BSON types (Decimal128, regex, code, …) go through the `bson` crate's own
//! converter.
//!
//! Relaxed JSON loses the int32/int64 distinction by design: a relaxed int64 that fits in 32 bits
//! reads back as an int32 (MongoDB's rule, not a bug of this writer).
//!
//! ```
//! use bson::doc;
//! use changeflow_testkit::extjson::to_json;
//!
//! let d = doc! { "a": 1, "b": 2.0, "c": 3_i64 };
//! assert_eq!(to_json(&d, false), r#"{"a":1,"b":2.0,"c":3}"#);
//! assert_eq!(
//!     to_json(&d, true),
//!     r#"{"a":{"$numberInt":"1"},"b":{"$numberDouble":"2.0"},"c":{"$numberLong":"3"}}"#
//! );
//! ```

use std::fmt::Write as _;

use bson::{Bson, Document};

/// Renders `doc` as one line of Extended JSON (canonical when `canonical`, else relaxed).
///
/// ```
/// use bson::{doc, oid::ObjectId};
/// use changeflow_testkit::extjson::to_json;
///
/// let id = ObjectId::from_bytes([0; 12]);
/// assert_eq!(to_json(&doc! { "_id": id }, false), r#"{"_id":{"$oid":"000000000000000000000000"}}"#);
/// ```
pub fn to_json(doc: &Document, canonical: bool) -> String {
    let mut out = String::with_capacity(256);
    write_document(&mut out, doc, canonical);
    out
}

/// Appends `doc` as Extended JSON to `out` (no trailing newline).
pub fn write_document(out: &mut String, doc: &Document, canonical: bool) {
    out.push('{');
    for (n, (key, value)) in doc.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value, canonical);
    }
    out.push('}');
}

/// Appends one BSON value as Extended JSON to `out`.
///
/// ```
/// use bson::Bson;
/// use changeflow_testkit::extjson::write_value;
///
/// let mut s = String::new();
/// write_value(&mut s, &Bson::DateTime(bson::DateTime::from_millis(0)), false);
/// assert_eq!(s, r#"{"$date":"1970-01-01T00:00:00.000Z"}"#);
/// ```
pub fn write_value(out: &mut String, value: &Bson, canonical: bool) {
    match value {
        Bson::Double(v) => write_double(out, *v, canonical),
        Bson::String(s) => write_string(out, s),
        Bson::Document(d) => write_document(out, d, canonical),
        Bson::Array(a) => {
            out.push('[');
            for (n, v) in a.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_value(out, v, canonical);
            }
            out.push(']');
        }
        Bson::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Bson::Null => out.push_str("null"),
        Bson::Int32(v) => {
            if canonical {
                let _ = write!(out, r#"{{"$numberInt":"{v}"}}"#);
            } else {
                let _ = write!(out, "{v}");
            }
        }
        Bson::Int64(v) => {
            if canonical {
                let _ = write!(out, r#"{{"$numberLong":"{v}"}}"#);
            } else {
                let _ = write!(out, "{v}");
            }
        }
        Bson::ObjectId(oid) => {
            let _ = write!(out, r#"{{"$oid":"{}"}}"#, oid.to_hex());
        }
        Bson::DateTime(dt) => write_date(out, dt.timestamp_millis(), canonical),
        Bson::Timestamp(ts) => {
            let _ = write!(
                out,
                r#"{{"$timestamp":{{"t":{},"i":{}}}}}"#,
                ts.time, ts.increment
            );
        }
        Bson::Binary(b) => {
            let _ = write!(
                out,
                r#"{{"$binary":{{"base64":"{}","subType":"{:02x}"}}}}"#,
                base64(&b.bytes),
                u8::from(b.subtype)
            );
        }
        other => {
            let json = if canonical {
                other.clone().into_canonical_extjson()
            } else {
                other.clone().into_relaxed_extjson()
            };
            out.push_str(&json.to_string());
        }
    }
}

fn write_double(out: &mut String, v: f64, canonical: bool) {
    if !v.is_finite() {
        let s = if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        let _ = write!(out, r#"{{"$numberDouble":"{s}"}}"#);
    } else if canonical || (v == 0.0 && v.is_sign_negative()) {
        let _ = write!(out, r#"{{"$numberDouble":"{v:?}"}}"#);
    } else {
        // `{:?}` is the shortest round-trip form and always has a `.` or an exponent
        // (`12.0`, `0.1`, `1e16`), so the value reads back as a double, never as an integer.
        let _ = write!(out, "{v:?}");
    }
}

fn write_date(out: &mut String, millis: i64, canonical: bool) {
    // 253402300799999 is 9999-12-31T23:59:59.999Z.
    if canonical || !(0..=253_402_300_799_999).contains(&millis) {
        let _ = write!(out, r#"{{"$date":{{"$numberLong":"{millis}"}}}}"#);
        return;
    }
    let days = millis.div_euclid(86_400_000);
    let ms_of_day = millis.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    let _ = write!(
        out,
        r#"{{"$date":"{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z"}}"#
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{08}' => Some("\\b"),
            '\u{0C}' => Some("\\f"),
            c if (c as u32) < 0x20 => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * k)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Binary, Timestamp, doc, oid::ObjectId, spec::BinarySubtype};

    fn via_bson_route(line: &str) -> Document {
        match serde_json::from_str::<serde_json::Value>(line).expect("valid JSON") {
            serde_json::Value::Object(map) => Document::try_from(map).expect("valid Extended JSON"),
            other => panic!("not an object: {other}"),
        }
    }

    fn sample() -> Document {
        doc! {
            "i32": 7, "neg": -3, "i64": 1_i64 << 40, "small64": 5_i64,
            "d": 12.0, "d2": 0.1, "big": 1e300, "tiny": 5e-324, "negzero": -0.0,
            "nan": f64::NAN, "inf": f64::INFINITY, "ninf": f64::NEG_INFINITY,
            "s": "quote\" back\\ nl\n tab\t ctl\u{1} é ✓",
            "oid": ObjectId::from_bytes([0xAB; 12]),
            "date": bson::DateTime::from_millis(1_700_000_000_123),
            "olddate": bson::DateTime::from_millis(-1),
            "ts": Timestamp { time: 1_700_000_000, increment: 3 },
            "bin": Binary { subtype: BinarySubtype::Uuid, bytes: (0u8..16).collect() },
            "bin0": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3, 4, 5] },
            "arr": [1, "x", null, true, { "n": [] }],
            "dec": Bson::Decimal128("1.5".parse().expect("decimal")),
        }
    }

    #[test]
    fn canonical_round_trips_exactly() {
        let d = sample();
        let back = via_bson_route(&to_json(&d, true));
        // The bson route sorts keys (serde_json's default map); NaN != NaN: so compare the
        // canonical renderings field by field.
        assert_eq!(back.len(), d.len());
        for (k, v) in &d {
            let got = back.get(k).expect("field present");
            let (mut a, mut b) = (String::new(), String::new());
            write_value(&mut a, got, true);
            write_value(&mut b, v, true);
            assert_eq!(a, b, "{k}");
            assert_eq!(got.element_type(), v.element_type(), "{k}");
        }
    }

    #[test]
    fn relaxed_keeps_types_except_small_int64() {
        let d = sample();
        let back = via_bson_route(&to_json(&d, false));
        for (k, v) in &d {
            let expected = if k == "small64" {
                bson::spec::ElementType::Int32
            } else {
                v.element_type()
            };
            assert_eq!(back.get(k).map(Bson::element_type), Some(expected), "{k}");
        }
        assert_eq!(back.get_f64("d").expect("double"), 12.0);
        assert_eq!(back.get_f64("tiny").expect("double"), 5e-324);
        assert_eq!(
            back.get_datetime("date").expect("date").timestamp_millis(),
            1_700_000_000_123
        );
        assert_eq!(
            back.get_str("s").expect("str"),
            d.get_str("s").expect("str")
        );
    }

    #[test]
    fn formats_like_mongodb() {
        let d = doc! {
            "a": 12.5, "b": 12.0,
            "w": bson::DateTime::from_millis(1_700_000_000_000),
            "bin": Binary { subtype: BinarySubtype::Uuid, bytes: vec![0xFF; 16] },
        };
        assert_eq!(
            to_json(&d, false),
            r#"{"a":12.5,"b":12.0,"w":{"$date":"2023-11-14T22:13:20.000Z"},"bin":{"$binary":{"base64":"/////////////////////w==","subType":"04"}}}"#
        );
        assert_eq!(
            to_json(
                &doc! { "w": bson::DateTime::from_millis(1_700_000_000_000) },
                true
            ),
            r#"{"w":{"$date":{"$numberLong":"1700000000000"}}}"#
        );
    }

    #[test]
    fn dates_match_the_bson_crate() {
        for ms in [
            0_i64,
            951_782_400_000,   // 2000-02-29
            4_107_542_400_000, // 2100-03-01
            253_402_300_799_999,
            1_700_000_000_999,
        ] {
            let mut s = String::new();
            write_date(&mut s, ms, false);
            let back = via_bson_route(&format!(r#"{{"d":{s}}}"#));
            assert_eq!(
                back.get_datetime("d").expect("date").timestamp_millis(),
                ms,
                "{s}"
            );
        }
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
