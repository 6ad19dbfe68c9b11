//! Tolerant decoding of the portal's payloads.
//!
//! The portal is deployed independently of the nodes, so it may add fields and list elements a
//! node does not understand yet. Unknown fields are logged and skipped; a list element that does
//! not decode is logged and dropped so that one odd resource does not cost the node all others.

use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;

/// Decodes `value` as `T`, logging every field `T` does not know at DEBUG.
pub(crate) fn decode<T: DeserializeOwned>(
    value: serde_json::Value,
    what: &str,
) -> Result<T, serde_json::Error> {
    serde_ignored::deserialize(value, |path| {
        tracing::debug!(%path, "Ignoring unknown field in {what}");
    })
}

/// `deserialize_with` target for lists whose malformed elements are dropped instead of failing
/// the whole message. Pair it with `#[serde(default)]` so an absent list is empty.
pub(crate) fn vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let raw = Vec::<serde_json::Value>::deserialize(deserializer)?;
    let what = std::any::type_name::<T>();

    Ok(raw
        .into_iter()
        .enumerate()
        .filter_map(|(index, element)| match decode::<T>(element, what) {
            Ok(t) => Some(t),
            Err(error) => {
                tracing::debug!(index, %error, "Skipping malformed {what}");
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Item {
        n: u8,
    }

    #[derive(Debug, Deserialize)]
    struct List {
        #[serde(default, deserialize_with = "super::vec")]
        items: Vec<Item>,
    }

    #[test]
    fn drops_only_the_bad_elements() {
        let list: List = super::decode(
            serde_json::json!({"items": [{"n": 1}, {"n": 300}, "x", {"n": 2, "extra": true}]}),
            "list",
        )
        .unwrap();

        assert_eq!(list.items, vec![Item { n: 1 }, Item { n: 2 }]);
    }

    #[test]
    fn absent_list_is_empty() {
        let list: List = super::decode(serde_json::json!({}), "list").unwrap();

        assert!(list.items.is_empty());
    }

    #[test]
    fn a_list_that_is_not_a_list_is_an_error() {
        assert!(super::decode::<List>(serde_json::json!({"items": 3}), "list").is_err());
    }
}
