//! Inferring column types from BSON values, and the widening rule.
//!
//! [`type_of`] gives the [`ColumnType`] of one value (recursively for documents and arrays);
//! [`widen`] joins two column types into one that holds the values of both, or reports a
//! conflict.
//!
//! # The type-conflict rule
//!
//! | column has | value of type | column becomes |
//! |---|---|---|
//! | any | the same type | unchanged |
//! | `Null` | any `T` | `T` (nulls fit every column) |
//! | `Int32` | `Int64` | `Int64` |
//! | `Int32` / `Int64` | `Double` (and the reverse) | `Double`; integers beyond ±2^53 go to the fallback |
//! | `Decimal(p1, s1)` | `Decimal(p2, s2)` | `Decimal(max integer digits + max scale, max scale)`, or `DecimalBytes` past 38 digits |
//! | `Decimal` / `DecimalBytes` | `DecimalBytes` / `Decimal` | `DecimalBytes` |
//! | `Uuid` / `LegacyUuid` / `Binary` | another of these | `Binary` (subtype kept) |
//! | `Document` | `Document` | fields merged in first-seen order, each widened |
//! | `Array(a)` | `Array(b)` | `Array(widen(a, b))` |
//! | `ExtJson` | any | `ExtJson` |
//! | anything else | | **conflict**: the column keeps its type and the value goes to the row's fallback, counted; with unions ([`widen_in`]), a dense `Union` of both |
//!
//! The rule is monotone: widening never narrows, so a stream settles on a schema.
//!
//! ```
//! use changeflow_sinks::arrow::infer::{type_of_document, widen};
//! use changeflow_sinks::arrow::mapping::ColumnType;
//! let a = type_of_document(bson::rawdoc! { "n": 1, "s": "x" }.as_bytes());
//! let b = type_of_document(bson::rawdoc! { "n": 2.5, "t": true }.as_bytes());
//! let (joined, conflict) = widen(&a, &b);
//! assert!(!conflict);
//! assert_eq!(joined, ColumnType::Document(vec![
//!     ("n".into(), ColumnType::Double), ("s".into(), ColumnType::String), ("t".into(), ColumnType::Bool),
//! ]));
//! assert!(widen(&ColumnType::String, &ColumnType::Int32).1);
//! ```

use changeflow_core::raw::{self, Element, kind};

use super::mapping::{ColumnType, DECIMAL_PRECISION, decimal_parts};

/// The column type of one BSON element.
pub fn type_of(e: &Element<'_>) -> ColumnType {
    type_of_in(e, false)
}

/// The column type of one BSON element; with `unions`, mixed array elements make a union.
pub fn type_of_in(e: &Element<'_>, unions: bool) -> ColumnType {
    let mut ty = ColumnType::Null;
    absorb(&mut ty, e, unions);
    ty
}

/// The type of a value that is neither a document nor an array.
fn scalar_type(e: &Element<'_>) -> ColumnType {
    match e.kind {
        kind::DOUBLE => ColumnType::Double,
        kind::STRING => ColumnType::String,
        kind::BINARY => match (e.value.get(4), e.value.len()) {
            (Some(4), 21) => ColumnType::Uuid,
            (Some(3), 21) => ColumnType::LegacyUuid,
            _ => ColumnType::Binary,
        },
        kind::UNDEFINED => ColumnType::Undefined,
        kind::OBJECT_ID => ColumnType::ObjectId,
        kind::BOOLEAN => ColumnType::Bool,
        kind::DATETIME => ColumnType::DateTime,
        kind::NULL => ColumnType::Null,
        kind::REGEX => ColumnType::Regex,
        kind::DB_POINTER => ColumnType::DbPointer,
        kind::JAVASCRIPT => ColumnType::JavaScript,
        kind::SYMBOL => ColumnType::Symbol,
        kind::INT32 => ColumnType::Int32,
        kind::TIMESTAMP => ColumnType::Timestamp,
        kind::INT64 => ColumnType::Int64,
        kind::DECIMAL128 => decimal_type(e.value),
        kind::MIN_KEY | kind::MAX_KEY => ColumnType::MinMaxKey,
        _ => ColumnType::ExtJson,
    }
}

/// Widens `ty` in place to hold the value `e` (the result of `widen_in(ty, type_of_in(e))`),
/// allocating only for fields not seen before. Returns whether some value conflicted.
pub fn absorb(ty: &mut ColumnType, e: &Element<'_>, unions: bool) -> bool {
    match (&mut *ty, e.kind) {
        (ColumnType::Null | ColumnType::Document(_), kind::DOCUMENT) => {
            absorb_document(ty, e.value, unions)
        }
        (ColumnType::Null, kind::ARRAY) => {
            *ty = ColumnType::Array(Box::new(ColumnType::Null));
            absorb(ty, e, unions)
        }
        (ColumnType::Array(element), kind::ARRAY) => {
            let mut conflict = false;
            for item in raw::elements(e.value).map_while(Result::ok) {
                conflict |= absorb(element, &item, unions);
            }
            conflict
        }
        (_, kind::DOCUMENT | kind::ARRAY) => {
            let mut value = ColumnType::Null;
            absorb(&mut value, e, unions);
            let (joined, conflict) = widen_in(ty, &value, unions);
            *ty = joined;
            conflict
        }
        _ => {
            let value = scalar_type(e);
            if *ty == value {
                return false;
            }
            let (joined, conflict) = widen_in(ty, &value, unions);
            *ty = joined;
            conflict
        }
    }
}

/// Widens `ty` (a `Document`, or `Null`) in place with the fields of the document `doc`.
/// Returns whether some value conflicted.
pub fn absorb_document(ty: &mut ColumnType, doc: &[u8], unions: bool) -> bool {
    if *ty == ColumnType::Null {
        *ty = ColumnType::Document(Vec::new());
    }
    let ColumnType::Document(fields) = ty else {
        let mut value = ColumnType::Document(Vec::new());
        absorb_document(&mut value, doc, unions);
        let (joined, conflict) = widen_in(ty, &value, unions);
        *ty = joined;
        return conflict;
    };
    let mut conflict = false;
    for e in raw::elements(doc).map_while(Result::ok) {
        match fields.iter_mut().find(|(k, _)| k.as_bytes() == e.key) {
            Some((_, existing)) => conflict |= absorb(existing, &e, unions),
            None => {
                let Some(key) = e.key_str() else { continue };
                fields.push((key.to_string(), type_of_in(&e, unions)));
            }
        }
    }
    conflict
}

/// The column type of a whole document (a `Document` of its fields).
pub fn type_of_document(doc: &[u8]) -> ColumnType {
    type_of_document_in(doc, false)
}

/// [`type_of_document`], with `unions` as in [`widen_in`].
pub fn type_of_document_in(doc: &[u8], unions: bool) -> ColumnType {
    let mut ty = ColumnType::Document(Vec::new());
    absorb_document(&mut ty, doc, unions);
    ty
}

/// The narrowest exact decimal type of a Decimal128 value, or `DecimalBytes`.
fn decimal_type(value: &[u8]) -> ColumnType {
    let Some((coefficient, scale)) = value.try_into().ok().and_then(decimal_parts) else {
        return ColumnType::DecimalBytes;
    };
    let digits = coefficient
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d as i32 + 1);
    let scale_kept = scale.max(0);
    let integer_digits = (digits - scale).max(0);
    let precision = integer_digits + scale_kept;
    match (u8::try_from(precision.max(1)), i8::try_from(scale_kept)) {
        (Ok(p), Ok(s)) if p <= DECIMAL_PRECISION => ColumnType::Decimal {
            precision: p,
            scale: s,
        },
        _ => ColumnType::DecimalBytes,
    }
}

/// Joins two column types (see the [module docs](self)): the joined type, and whether they
/// conflict (then the joined type is `a`).
pub fn widen(a: &ColumnType, b: &ColumnType) -> (ColumnType, bool) {
    widen_in(a, b, false)
}

/// [`widen`]; with `unions`, conflicting types join into a dense `Union` of both instead of a
/// conflict (each member widened with the compatible types that join it).
///
/// ```
/// use changeflow_sinks::arrow::infer::widen_in;
/// use changeflow_sinks::arrow::mapping::ColumnType;
/// let (u, conflict) = widen_in(&ColumnType::Int32, &ColumnType::String, true);
/// assert!(!conflict);
/// assert_eq!(u, ColumnType::Union(vec![ColumnType::Int32, ColumnType::String]));
/// let (u, _) = widen_in(&u, &ColumnType::Double, true);
/// assert_eq!(u, ColumnType::Union(vec![ColumnType::Double, ColumnType::String]));
/// ```
pub fn widen_in(a: &ColumnType, b: &ColumnType, unions: bool) -> (ColumnType, bool) {
    use ColumnType as T;
    let joined = match (a, b) {
        _ if a == b => a.clone(),
        (T::Null, other) | (other, T::Null) => other.clone(),
        (T::Union(_), _) | (_, T::Union(_)) if unions => {
            let mut joined = match a {
                T::Union(members) => members.clone(),
                single => vec![single.clone()],
            };
            match b {
                T::Union(members) => members.iter().for_each(|m| join_member(&mut joined, m)),
                single => join_member(&mut joined, single),
            }
            T::Union(joined)
        }
        (T::ExtJson, _) => T::ExtJson,
        (T::Int32, T::Int64) | (T::Int64, T::Int32) => T::Int64,
        (T::Int32 | T::Int64, T::Double) | (T::Double, T::Int32 | T::Int64) => T::Double,
        (
            T::Decimal {
                precision: p1,
                scale: s1,
            },
            T::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => {
            let integer = (i16::from(*p1) - i16::from(*s1)).max(i16::from(*p2) - i16::from(*s2));
            let scale = (*s1).max(*s2);
            match u8::try_from(integer + i16::from(scale)) {
                Ok(p) if p <= DECIMAL_PRECISION => T::Decimal {
                    precision: p.max(1),
                    scale,
                },
                _ => T::DecimalBytes,
            }
        }
        (T::Decimal { .. } | T::DecimalBytes, T::Decimal { .. } | T::DecimalBytes) => {
            T::DecimalBytes
        }
        (T::Uuid | T::LegacyUuid | T::Binary, T::Uuid | T::LegacyUuid | T::Binary) => T::Binary,
        (T::Document(fa), T::Document(fb)) => {
            let mut fields = fa.clone();
            let mut conflict = false;
            for (name, ty) in fb {
                match fields.iter_mut().find(|(k, _)| k == name) {
                    Some((_, existing)) => {
                        let (joined, c) = widen_in(existing, ty, unions);
                        *existing = joined;
                        conflict |= c;
                    }
                    None => fields.push((name.clone(), ty.clone())),
                }
            }
            return (T::Document(fields), conflict);
        }
        (T::Array(ea), T::Array(eb)) => {
            let (joined, conflict) = widen_in(ea, eb, unions);
            return (T::Array(Box::new(joined)), conflict);
        }
        _ if unions => T::Union(vec![a.clone(), b.clone()]),
        _ => return (a.clone(), true),
    };
    (joined, false)
}

/// Adds `ty` to union members: widened into the first member it joins without conflict (the
/// joined member then absorbs any other member it now joins), else appended.
fn join_member(members: &mut Vec<ColumnType>, ty: &ColumnType) {
    match members.iter().position(|m| !widen_in(m, ty, false).1) {
        Some(i) => {
            let mut joined = widen_in(&members[i], ty, true).0;
            members.remove(i);
            while let Some(j) = members.iter().position(|m| !widen_in(m, &joined, false).1) {
                joined = widen_in(&members.remove(j), &joined, true).0;
            }
            members.insert(i.min(members.len()), joined);
        }
        None => members.push(ty.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(doc: bson::Document) -> ColumnType {
        match type_of_document(&doc.to_vec().unwrap()) {
            ColumnType::Document(mut f) => f.remove(0).1,
            other => other,
        }
    }

    #[test]
    fn decimals_get_their_exact_precision_and_scale() {
        let d = |s: &str| bson::Bson::Decimal128(s.parse().unwrap());
        assert_eq!(
            ty(bson::doc! { "d": d("12.50") }),
            ColumnType::Decimal {
                precision: 4,
                scale: 2
            }
        );
        assert_eq!(
            ty(bson::doc! { "d": d("0.05") }),
            ColumnType::Decimal {
                precision: 2,
                scale: 2
            }
        );
        assert_eq!(
            ty(bson::doc! { "d": d("1E+3") }),
            ColumnType::Decimal {
                precision: 4,
                scale: 0
            }
        );
        assert_eq!(ty(bson::doc! { "d": d("NaN") }), ColumnType::DecimalBytes);
        assert_eq!(ty(bson::doc! { "d": d("1E+40") }), ColumnType::DecimalBytes);
        let (joined, conflict) = widen(
            &ColumnType::Decimal {
                precision: 4,
                scale: 2,
            },
            &ColumnType::Decimal {
                precision: 36,
                scale: 0,
            },
        );
        assert!(!conflict);
        assert_eq!(
            joined,
            ColumnType::Decimal {
                precision: 38,
                scale: 2
            }
        );
        assert_eq!(
            widen(
                &ColumnType::Decimal {
                    precision: 10,
                    scale: 10
                },
                &ColumnType::Decimal {
                    precision: 30,
                    scale: 0
                }
            )
            .0,
            ColumnType::DecimalBytes
        );
    }

    #[test]
    fn arrays_widen_their_elements_and_conflicts_keep_the_first_type() {
        assert_eq!(
            ty(bson::doc! { "a": [1, 2.5, bson::Bson::Null] }),
            ColumnType::Array(Box::new(ColumnType::Double))
        );
        assert_eq!(
            ty(bson::doc! { "a": [1, "x"] }),
            ColumnType::Array(Box::new(ColumnType::Int32))
        );
        assert_eq!(
            ty(bson::doc! { "a": [] }),
            ColumnType::Array(Box::new(ColumnType::Null))
        );
        let (joined, conflict) = widen(&ColumnType::String, &ColumnType::Int64);
        assert!(conflict);
        assert_eq!(joined, ColumnType::String);
    }

    #[test]
    fn widening_is_commutative_on_compatible_types() {
        let types = [
            ColumnType::Null,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Double,
            ColumnType::Uuid,
            ColumnType::Binary,
            ColumnType::DecimalBytes,
        ];
        for a in &types {
            for b in &types {
                let (ab, c1) = widen(a, b);
                let (ba, c2) = widen(b, a);
                assert_eq!(c1, c2, "{a:?} {b:?}");
                if !c1 {
                    assert_eq!(ab, ba, "{a:?} {b:?}");
                }
            }
        }
    }
}
