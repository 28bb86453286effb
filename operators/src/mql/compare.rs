//! MongoDB's comparison order across BSON types, and [`Key`]: a value usable as a grouping or
//! join key (ordered, hashed and compared by MongoDB's rules).
//!
//! # Order
//!
//! MinKey < null (and undefined, and missing) < numbers < symbol, string < object < array <
//! binary < ObjectId < boolean < date < timestamp < regular expression < DBPointer < JavaScript
//! < MaxKey. Within a type:
//!
//! * numbers by value across int32 / int64 / double / Decimal128 ([`crate::mql::number`]);
//! * strings (and symbols) by their UTF-8 bytes (the simple collation);
//! * objects field by field: each pair by type, then field name, then value; a prefix first;
//! * arrays element by element, a prefix first;
//! * binary by length, then subtype, then bytes;
//! * regular expressions by pattern, then options.
//!
//! ```
//! use bson::{bson, Bson};
//! use changeflow_operators::mql::compare::{compare, Key};
//! use std::cmp::Ordering;
//! assert_eq!(compare(&Bson::Null, &bson!(0)), Ordering::Less);
//! assert_eq!(compare(&bson!("a"), &bson!({})), Ordering::Less);
//! assert_eq!(Key::new(bson!(1)), Key::new(bson!(1.0)));
//! assert_eq!(Key::new(bson!({"a": 2_i64})), Key::new(bson!({"a": 2.0})));
//! ```

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use bson::Bson;
use serde::{Deserialize, Serialize};

use crate::mql::number::{Dec, Num, cmp_num};

/// The rank of a value's type in MongoDB's comparison order.
pub fn type_rank(value: &Bson) -> u8 {
    match value {
        Bson::MinKey => 1,
        Bson::Null | Bson::Undefined => 2,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 3,
        Bson::String(_) | Bson::Symbol(_) => 4,
        Bson::Document(_) => 5,
        Bson::Array(_) => 6,
        Bson::Binary(_) => 7,
        Bson::ObjectId(_) => 8,
        Bson::Boolean(_) => 9,
        Bson::DateTime(_) => 10,
        Bson::Timestamp(_) => 11,
        Bson::RegularExpression(_) => 12,
        Bson::DbPointer(_) => 13,
        Bson::JavaScriptCode(_) | Bson::JavaScriptCodeWithScope(_) => 14,
        Bson::MaxKey => 15,
    }
}

/// Compares two values in MongoDB's order (see the module docs).
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        _ if ra == 3 => match (Num::of(a), Num::of(b)) {
            (Some(x), Some(y)) => cmp_num(x, y),
            _ => Ordering::Equal,
        },
        _ if ra == 4 => string_of(a).cmp(string_of(b)),
        (Bson::Document(x), Bson::Document(y)) => {
            let mut xs = x.iter();
            let mut ys = y.iter();
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some((kx, vx)), Some((ky, vy))) => {
                        let order = type_rank(vx)
                            .cmp(&type_rank(vy))
                            .then_with(|| kx.as_bytes().cmp(ky.as_bytes()))
                            .then_with(|| compare(vx, vy));
                        if order != Ordering::Equal {
                            return order;
                        }
                    }
                }
            }
        }
        (Bson::Array(x), Bson::Array(y)) => {
            for (vx, vy) in x.iter().zip(y) {
                let order = compare(vx, vy);
                if order != Ordering::Equal {
                    return order;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .as_str()
            .cmp(y.pattern.as_str())
            .then_with(|| x.options.as_str().cmp(y.options.as_str())),
        (Bson::DbPointer(_), Bson::DbPointer(_)) => format!("{a:?}").cmp(&format!("{b:?}")),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code.cmp(&y.code).then_with(|| {
                compare(
                    &Bson::Document(x.scope.clone()),
                    &Bson::Document(y.scope.clone()),
                )
            })
        }
        (Bson::JavaScriptCode(_), _) => Ordering::Less,
        (_, Bson::JavaScriptCode(_)) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

fn string_of(v: &Bson) -> &[u8] {
    match v {
        Bson::String(s) | Bson::Symbol(s) => s.as_bytes(),
        _ => &[],
    }
}

/// Whether two values are equal by MongoDB's rules (`1 == 1.0`, field order matters in
/// documents).
pub fn equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

/// A value as a grouping / join key: equal keys are exactly the values MongoDB considers equal
/// (so `NumberInt(1)`, `NumberLong(1)`, `1.0` and `NumberDecimal("1.0")` are one group), ordered
/// by MongoDB's order, hashed consistently with that equality.
#[derive(Clone, Debug)]
pub struct Key(pub Bson);

/// Keys travel between workers as a one-field BSON document (`{"": value}`).
impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut doc = bson::Document::new();
        doc.insert("", self.0.clone());
        let bytes = doc.to_vec().map_err(serde::ser::Error::custom)?;
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(deserializer)?;
        let doc = bson::Document::from_reader(&bytes[..]).map_err(serde::de::Error::custom)?;
        doc.get("")
            .cloned()
            .map(Key)
            .ok_or_else(|| serde::de::Error::custom("a key document without its value"))
    }
}

fn serde_bytes_vec<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct Bytes;
    impl<'de> serde::de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("BSON bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_bytes(Bytes)
}

impl Key {
    /// Wraps a value.
    pub fn new(value: Bson) -> Self {
        Key(value)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        equal(&self.0, &other.0)
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_value(&self.0, state);
    }
}

fn hash_value<H: Hasher>(value: &Bson, state: &mut H) {
    type_rank(value).hash(state);
    match value {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            hash_number(value, state)
        }
        Bson::String(s) | Bson::Symbol(s) => s.hash(state),
        Bson::Document(d) => {
            for (k, v) in d {
                type_rank(v).hash(state);
                k.hash(state);
                hash_value(v, state);
            }
        }
        Bson::Array(items) => {
            items.len().hash(state);
            for v in items {
                hash_value(v, state);
            }
        }
        Bson::Binary(b) => {
            u8::from(b.subtype).hash(state);
            b.bytes.hash(state);
        }
        Bson::ObjectId(o) => o.bytes().hash(state),
        Bson::Boolean(b) => b.hash(state),
        Bson::DateTime(d) => d.timestamp_millis().hash(state),
        Bson::Timestamp(t) => (t.time, t.increment).hash(state),
        Bson::RegularExpression(r) => {
            r.pattern.as_str().hash(state);
            r.options.as_str().hash(state);
        }
        Bson::JavaScriptCode(c) => c.hash(state),
        Bson::JavaScriptCodeWithScope(c) => c.code.hash(state),
        _ => {}
    }
}

/// Equal numbers hash alike: integral values as an `i64` when they fit; other values by their
/// exact normalized decimal, or by their bits for doubles that no decimal equals.
fn hash_number<H: Hasher>(value: &Bson, state: &mut H) {
    let Some(n) = Num::of(value) else { return };
    if n.is_nan() {
        return 0u8.hash(state);
    }
    match n.to_dec() {
        Some(d) => match d.to_i64() {
            Some(i) => (1u8, i).hash(state),
            None => match d.normalized() {
                Dec::Finite { neg, coef, exp } => (2u8, neg, coef, exp).hash(state),
                Dec::Inf(neg) => (3u8, neg).hash(state),
                Dec::NaN => 0u8.hash(state),
            },
        },
        None => (4u8, n.to_f64().to_bits()).hash(state),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use bson::{Binary, DateTime, bson, oid::ObjectId, spec::BinarySubtype};

    use super::*;

    fn h(v: &Bson) -> u64 {
        let mut s = DefaultHasher::new();
        Key::new(v.clone()).hash(&mut s);
        s.finish()
    }

    #[test]
    fn the_cross_type_order() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            bson!(-1.5),
            bson!(3),
            bson!("a"),
            bson!({"a": 1}),
            bson!([1]),
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![1],
            }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            bson!(false),
            Bson::DateTime(DateTime::from_millis(0)),
            Bson::Timestamp(bson::Timestamp {
                time: 1,
                increment: 1,
            }),
            Bson::RegularExpression(bson::Regex {
                pattern: "a".try_into().unwrap(),
                options: "".try_into().unwrap(),
            }),
            Bson::MaxKey,
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn equal_values_have_equal_keys_and_hashes() {
        let groups = [
            vec![
                bson!(1),
                bson!(1_i64),
                bson!(1.0),
                Bson::Decimal128("1.00".parse().unwrap()),
            ],
            vec![bson!(0.5), Bson::Decimal128("0.50".parse().unwrap())],
            vec![bson!({"a": 2}), bson!({"a": 2.0})],
            vec![bson!([1, "x"]), bson!([1.0, "x"])],
            vec![Bson::Null, Bson::Undefined],
        ];
        for group in &groups {
            for a in group {
                for b in group {
                    assert_eq!(Key::new(a.clone()), Key::new(b.clone()));
                    assert_eq!(h(a), h(b), "{a:?} {b:?}");
                }
            }
        }
        assert_ne!(
            Key::new(bson!(0.1)),
            Key::new(Bson::Decimal128("0.1".parse().unwrap()))
        );
        assert_ne!(
            Key::new(bson!({"a": 1, "b": 2})),
            Key::new(bson!({"b": 2, "a": 1}))
        );
        assert!(Key::new(bson!([1, 2])) < Key::new(bson!([1, 2, 0])));
    }
}
