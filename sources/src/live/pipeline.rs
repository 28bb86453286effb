//! Checking a change-stream pipeline before the stream opens.
//!
//! The resume token is the event's `_id`: a stage that removes or rewrites it makes the stream
//! unresumable, and MongoDB (4.2+) fails such a stream with 280 at its first event. The source
//! refuses the pipeline up front instead, saying which stage and why:
//!
//! * `$project` that excludes `_id` (`_id: 0`), sets it to an expression, or excludes a sub-field
//!   of it (`"_id._data": 0`);
//! * `$unset` of `_id` or a sub-field; `$addFields` / `$set` of `_id` or a sub-field;
//! * `$replaceRoot` / `$replaceWith` (the root, and so `_id`, is replaced);
//! * `$changeStreamSplitLargeEvent` anywhere but last.
//!
//! ```
//! use changeflow_sources::live::pipeline::check;
//! let ok = bson::doc! { "$match": { "operationType": "insert" } };
//! assert!(check(&[ok]).is_ok());
//! let bad = bson::doc! { "$project": { "_id": 0, "fullDocument": 1 } };
//! assert!(check(&[bad]).unwrap_err().contains("removes `_id`"));
//! ```

use bson::{Bson, Document};

fn truthy(v: &Bson) -> Option<bool> {
    match v {
        Bson::Boolean(b) => Some(*b),
        Bson::Int32(n) => Some(*n != 0),
        Bson::Int64(n) => Some(*n != 0),
        Bson::Double(n) => Some(*n != 0.0),
        _ => None,
    }
}

fn is_id_path(key: &str) -> bool {
    key == "_id" || key.starts_with("_id.")
}

/// `Err(reason)` if a stage modifies or removes `_id`, or the split stage is misplaced.
pub fn check(pipeline: &[Document]) -> Result<(), String> {
    for (n, stage) in pipeline.iter().enumerate() {
        let Some((name, spec)) = stage.iter().next() else {
            return Err(format!("stage {n} is empty"));
        };
        let at = format!("stage {n} ({name})");
        let removes = || {
            Err(format!(
                "{at} removes `_id`, the resume token; the stream could not be resumed"
            ))
        };
        let modifies = || {
            Err(format!(
                "{at} modifies `_id`, the resume token; the stream could not be resumed"
            ))
        };
        match (name.as_str(), spec) {
            ("$project", Bson::Document(fields)) => {
                for (key, value) in fields {
                    if key == "_id" {
                        match truthy(value) {
                            Some(false) => return removes(),
                            Some(true) => {}
                            None => return modifies(),
                        }
                    } else if is_id_path(key) {
                        return modifies();
                    }
                }
            }
            ("$unset", Bson::String(field)) if is_id_path(field) => return removes(),
            ("$unset", Bson::Array(fields))
                if fields.iter().any(|f| f.as_str().is_some_and(is_id_path)) =>
            {
                return removes();
            }
            ("$addFields" | "$set", Bson::Document(fields))
                if fields.keys().any(|k| is_id_path(k)) =>
            {
                return modifies();
            }
            ("$replaceRoot" | "$replaceWith", _) => return modifies(),
            ("$changeStreamSplitLargeEvent", _) if n + 1 != pipeline.len() => {
                return Err(format!("{at} must be the last stage of the pipeline"));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn every_way_of_touching_the_token_is_refused() {
        for bad in [
            doc! { "$project": { "_id": false } },
            doc! { "$project": { "_id": "$fullDocument._id" } },
            doc! { "$project": { "_id._data": 0 } },
            doc! { "$unset": "_id" },
            doc! { "$unset": ["ns", "_id._data"] },
            doc! { "$set": { "_id": 1 } },
            doc! { "$addFields": { "_id.x": 1 } },
            doc! { "$replaceRoot": { "newRoot": "$fullDocument" } },
            doc! { "$replaceWith": "$fullDocument" },
        ] {
            assert!(check(std::slice::from_ref(&bad)).is_err(), "{bad}");
        }
        for good in [
            doc! { "$project": { "_id": 1, "fullDocument": 1 } },
            doc! { "$unset": "fullDocument.secret" },
            doc! { "$set": { "fullDocument.x": 1 } },
        ] {
            assert!(check(std::slice::from_ref(&good)).is_ok(), "{good}");
        }
        assert!(
            check(&[
                doc! { "$changeStreamSplitLargeEvent": {} },
                doc! { "$match": {} }
            ])
            .is_err()
        );
    }
}
